"""The compiled configuration cache (config/cache.py): it may only ever save time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ssmtp_mailer import paths
from ssmtp_mailer.config import cache, loader
from ssmtp_mailer.config.loader import load_config_file
from ssmtp_mailer.errors import ConfigError


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every tree is cached (no size threshold), in a folder of the test's own."""
    where = tmp_path / "cache" / "ssmtp-mailer"
    monkeypatch.setattr(paths, "config_cache_dir", lambda: where)
    monkeypatch.setattr(loader, "CACHE_MIN_BYTES", 0)
    return where


def make_tree(root: Path, mappings: int = 3) -> Path:
    (root / "domains").mkdir()
    (root / "mappings").mkdir()
    main = root / "ssmtp-mailer.conf"
    main.write_text(
        "[global]\ndefault_hostname = host.example\ndefault_from = root@host.example\n"
        f"spool_dir = {root / 'spool'}\n"
    )
    (root / "domains" / "relay.conf").write_text(
        "[domain:relay.example]\nsmtp_server = smtp.relay.example\n"
        "relay_account = me@relay.example\nsurprise = 1\n"
    )
    (root / "mappings" / "a.conf").write_text(
        "".join(
            f"[mapping:m{n}]\nfrom_pattern = alias{n}@in.example\n"
            f"to_pattern = user{n}@relay.example\ndomain = relay.example\n\n"
            for n in range(mappings)
        )
    )
    return main


def age(*files: Path) -> None:
    """Move mtimes out of the window in which a change could hide under the same mtime."""
    for path in files:
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


def all_files(main: Path) -> list[Path]:
    return [main, *sorted(main.parent.glob("*/*.conf"))]


def cache_files(where: Path) -> list[Path]:
    return sorted(where.glob("config-*.json"))


def test_cached_load_equals_a_fresh_load_and_keeps_warnings(
    tmp_path: Path, cache_dir: Path
) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    fresh = load_config_file(main)
    assert len(cache_files(cache_dir)) == 1
    cached = load_config_file(main)
    assert cached == fresh
    assert any("surprise: unknown key" in w for w in cached.warnings)


def test_cache_is_private_json_not_pickle(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    load_config_file(main)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    (entry,) = cache_files(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) & 0o077 == 0
    data = entry.read_bytes()
    assert data.startswith(b"{")
    assert b"pickle" not in Path(cache.__file__).read_bytes()


def test_edit_of_any_file_is_seen(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    mapping = tmp_path / "mappings" / "a.conf"
    mapping.write_text(mapping.read_text().replace("user0@", "other0@"))
    assert load_config_file(main).mappings[0].to_pattern == "other0@relay.example"
    domain = tmp_path / "domains" / "relay.conf"
    domain.write_text(domain.read_text().replace("smtp.relay", "mx.relay"))
    assert load_config_file(main).domains["relay.example"].smtp_server == "mx.relay.example"
    main.write_text(main.read_text().replace("host.example\n", "other.example\n", 1))
    assert load_config_file(main).global_.default_hostname == "other.example"


def test_same_size_same_mtime_edit_is_seen(tmp_path: Path, cache_dir: Path) -> None:
    """A change that keeps size and mtime (coarse timestamps) is caught by its content."""
    main = make_tree(tmp_path)
    mapping = tmp_path / "mappings" / "a.conf"
    load_config_file(main)
    before = mapping.stat()
    mapping.write_text(mapping.read_text().replace("user1@", "resu1@"))
    os.utime(mapping, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_config_file(main).mappings[1].to_pattern == "resu1@relay.example"


def test_added_and_removed_files_are_seen(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    extra = tmp_path / "mappings" / "b.conf"
    extra.write_text(
        "[mapping:late]\nfrom_pattern = late@in.example\nto_pattern = l@relay.example\n"
    )
    age(extra)
    assert [m.name for m in load_config_file(main).mappings][-1] == "late"
    assert len(load_config_file(main).files) == 4
    extra.unlink()
    config = load_config_file(main)
    assert "late" not in [m.name for m in config.mappings]
    assert len(config.files) == 3


def test_broken_file_is_an_error_even_after_caching(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    (tmp_path / "domains" / "bad.conf").write_text("[domain:bad.example]\nsmtp_port = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(main)
    assert any("bad.conf:2: smtp_port" in p for p in caught.value.problems)


def test_configuration_with_errors_is_never_cached(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    (tmp_path / "domains" / "bad.conf").write_text("[domain:bad.example]\nsmtp_port = 0\n")
    with pytest.raises(ConfigError):
        load_config_file(main)
    assert cache_files(cache_dir) == []


def test_unwritable_cache_location_is_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(paths, "config_cache_dir", lambda: blocker / "ssmtp-mailer")
    monkeypatch.setattr(loader, "CACHE_MIN_BYTES", 0)
    main = make_tree(tmp_path)
    first = load_config_file(main)
    assert load_config_file(main) == first


def test_cache_writable_by_others_is_ignored(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    (entry,) = cache_files(cache_dir)
    entry.write_text(entry.read_text().replace("smtp.relay.example", "evil.example"))
    os.chmod(entry, 0o666)
    assert load_config_file(main).domains["relay.example"].smtp_server == "smtp.relay.example"


def test_corrupt_cache_is_ignored(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    (entry,) = cache_files(cache_dir)
    entry.write_bytes(b"{not json")
    assert len(load_config_file(main).mappings) == 3


def test_strict_load_reads_the_tree(tmp_path: Path, cache_dir: Path) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    with pytest.raises(ConfigError) as caught:
        load_config_file(main, strict=True)
    assert any("surprise" in p for p in caught.value.problems)


def test_small_tree_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = tmp_path / "cache"
    monkeypatch.setattr(paths, "config_cache_dir", lambda: where)
    load_config_file(make_tree(tmp_path))
    assert not where.exists()


def test_a_tree_with_an_inline_password_is_never_cached(tmp_path: Path, cache_dir: Path) -> None:
    """The password stays only in the file whose permissions were checked."""
    conf = tmp_path / "m.conf"
    conf.write_text("[domain:x]\nsmtp_server = s.example\nusername = u\npassword = cache-me-not\n")
    conf.chmod(0o600)
    for _ in range(2):
        assert load_config_file(conf).domains["x"].password == "cache-me-not"
    assert not cache_dir.exists() or not any(p.is_file() for p in cache_dir.rglob("*"))
    conf.write_text("[domain:x]\nsmtp_server = s.example\nusername = u\n")
    load_config_file(conf)
    assert any(p.is_file() for p in cache_dir.rglob("*")), "the same tree without it is cached"


def test_in_place_edit_keeping_the_mtime_is_seen(tmp_path: Path, cache_dir: Path) -> None:
    """`rsync -t --inplace` or `cp -p`: same size, same old mtime, only the ctime moves."""
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    mapping = tmp_path / "mappings" / "a.conf"
    before = mapping.stat()
    with open(mapping, "r+b") as handle:
        text = handle.read().replace(b"user2@", b"resu2@")
        handle.seek(0)
        handle.write(text)
    os.utime(mapping, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert mapping.stat().st_ino == before.st_ino and mapping.stat().st_size == before.st_size
    assert load_config_file(main).mappings[2].to_pattern == "resu2@relay.example"


def test_new_loader_code_makes_the_cache_stale(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = make_tree(tmp_path)
    age(*all_files(main))
    load_config_file(main)
    (entry,) = cache_files(cache_dir)
    # What an older release might have cached for the same files: read it only if the
    # loader that wrote it is the one running now.
    entry.write_bytes(entry.read_bytes().replace(b"user0@relay.example", b"stale@relay.example"))
    monkeypatch.setattr(cache, "_code", ["a digest of other loader code"])
    assert load_config_file(main).mappings[0].to_pattern == "user0@relay.example"
