"""The man pages cover what the program has: every command's options, every sendmail flag,
every exit code, every configuration key with its default; and groff finds nothing to fix."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from ssmtp_mailer import errors
from ssmtp_mailer.cli import cli
from ssmtp_mailer.config.loader import SCHEMAS
from ssmtp_mailer.sendmail import USAGE

MAN = Path(__file__).resolve().parent.parent / "man"
PAGE8 = MAN / "ssmtp-mailer.8"
PAGE5 = MAN / "ssmtp-mailer.conf.5"
# Shared by every command; the COMMANDS section's introduction documents them once.
COMMON = {"-C", "--config", "-v", "--verbose", "-h", "--help"}
CONF_SECTIONS = {
    "global": "[global]",
    "domain": "[domain:NAME]",
    "user": "[user:ADDRESS]",
    "mapping": "[mapping:NAME]",
}


def plain(roff: str) -> str:
    """The words of a roff source: escapes for dashes and quotes resolved, fonts dropped."""
    text = re.sub(r"\\f[BIRP]|\\&|\\c", "", roff)
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace("\\(dq", '"')
    return text.replace("\\e", "\\")


def sections(page: Path, macro: str) -> dict[str, str]:
    """Heading (as plain text) -> the body under it, for `.SH` or `.SS` headings."""
    out: dict[str, str] = {}
    heading = None
    for line in page.read_text().splitlines():
        if line.startswith((".SH ", ".SS ")):
            heading = None
            if line.startswith(macro + " "):
                heading = plain(line[4:]).strip().strip('"')
                out[heading] = ""
            continue
        if heading is not None:
            out[heading] += line + "\n"
    return out


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", plain(text)) is not None


def commands() -> Iterator[tuple[str, click.Command, click.Context]]:
    """Every command of the click tree with its path (`config import`), groups included."""

    def walk(
        command: click.Command, path: str, parent: click.Context | None
    ) -> Iterator[tuple[str, click.Command, click.Context]]:
        ctx = click.Context(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
        yield path, command, ctx
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}".strip(), ctx)

    yield from walk(cli, "", None)


def options(command: click.Command, ctx: click.Context) -> list[str]:
    names: list[str] = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.extend(param.opts + param.secondary_opts)
    return names


def subsection_for(path: str, subsections: dict[str, str]) -> tuple[str, str] | None:
    """The `.SS` documenting command `path`: its heading names the command."""
    for heading, body in subsections.items():
        names = [part.strip() for part in re.split(r",", heading)]
        if any(name == path or name.startswith(path + " ") for name in names):
            return heading, body
    return None


COMMAND_PATHS = [path for path, _, _ in commands()]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: p or "ssmtp-mailer")
def test_every_option_of_every_command_is_documented(path: str) -> None:
    page = PAGE8.read_text()
    found = {p: (c, ctx) for p, c, ctx in commands()}
    command, ctx = found[path]
    intro = sections(PAGE8, ".SH")["COMMANDS"]
    subsections = sections(PAGE8, ".SS")
    if isinstance(command, click.Group):
        # The root and the groups have the shared options only (and --version).
        for option in options(command, ctx):
            assert mentions(intro, option), f"ssmtp-mailer {path}: {option} not in COMMANDS"
        for name in command.list_commands(ctx):
            assert mentions(page, f"{path} {name}".strip()), f"{path} {name}: not in the page"
        return
    entry = subsection_for(path, subsections)
    assert entry is not None, f"no .SS for `{path}` in {PAGE8.name} (have: {sorted(subsections)})"
    heading, body = entry
    for option in options(command, ctx):
        if option in COMMON:
            assert mentions(intro, option), f"{option} not in the COMMANDS introduction"
        else:
            assert mentions(heading + "\n" + body, option), f"{path}: {option} not documented"


def test_every_sendmail_flag_is_documented() -> None:
    flags = set(re.findall(r"(?<![\w*-])(-{1,2}[A-Za-z][A-Za-z*]*)", USAGE))
    assert {"-t", "-i", "-oi", "-f", "-r", "-F", "-bs", "-bp", "-q", "-o*", "-d*"} <= flags
    body = sections(PAGE8, ".SH")["SENDMAIL FLAGS"]
    missing = sorted(f for f in flags if not mentions(body, f))
    assert missing == []


def test_every_exit_code_is_documented() -> None:
    codes = {v for k, v in vars(errors).items() if k.startswith("EX_") and isinstance(v, int)}
    body = sections(PAGE8, ".SH")["EXIT STATUS"]
    documented = {int(n) for n in re.findall(r"^\.B (\d+)$", body, re.M)}
    assert codes <= documented, sorted(codes - documented)


def test_page8_has_the_sections_a_reader_looks_for() -> None:
    headings = set(sections(PAGE8, ".SH"))
    assert {
        "SYNOPSIS",
        "SENDMAIL FLAGS",
        "COMMANDS",
        "EXIT STATUS",
        "FILES",
        "EXAMPLES",
    } <= headings
    assert "SHELL COMPLETION" in headings


def conf_entries(kind: str) -> list[tuple[str, str]]:
    """(tag line, body) of each `.TP` entry in the conf page's section for `kind`."""
    body = sections(PAGE5, ".SH")[CONF_SECTIONS[kind]]
    entries = []
    for chunk in body.split(".TP\n")[1:]:
        tag, _, text = chunk.partition("\n")
        entries.append((plain(tag), plain(text)))
    return entries


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_key_the_loader_knows_is_documented_with_its_default(kind: str) -> None:
    entries = conf_entries(kind)
    undocumented, no_default = [], []
    for key in SCHEMAS[kind]:
        # Named on the tag line itself, not inside another key's [default].
        tagged = [(t, text) for t, text in entries if mentions(re.sub(r"\[[^]]*\]", "", t), key)]
        if not tagged:
            undocumented.append(key)
            continue
        tag, text = tagged[0]
        # `key [default]` on the tag line, or a sentence giving the default (or saying
        # that there is none, or that the key is required) in the entry.
        at = re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", tag)
        after = tag[at.end() :] if at else ""
        if not (
            after.lstrip(' "').startswith("[") or re.search(r"\b(defaults?|required)\b", text, re.I)
        ):
            no_default.append(key)
    assert not undocumented, f"[{kind}] keys with no entry in {PAGE5.name}: {undocumented}"
    assert not no_default, f"[{kind}] keys whose entry gives no default: {no_default}"


def groff_or_skip() -> str:
    groff = shutil.which("groff")
    if groff is None:
        if os.environ.get("CI"):
            pytest.fail("groff is not installed (.ci/run installs it)")
        pytest.skip("groff is not installed")
    return groff


@pytest.mark.parametrize("page", [PAGE8, PAGE5], ids=lambda p: p.name)
def test_groff_finds_nothing_to_warn_about(page: Path) -> None:
    done = subprocess.run(
        [groff_or_skip(), "-man", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_groff_renders_the_commands() -> None:
    groff = groff_or_skip()
    done = subprocess.run(
        [groff, "-man", "-Tutf8", "-P-cbou", str(PAGE8)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80"},
    )
    assert done.returncode == 0
    assert "config import --from ssmtp|msmtp file --out dir" in done.stdout
