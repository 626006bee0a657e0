"""`ssmtp-mailer dkim keygen`: a DKIM private key file and the TXT record to publish."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from ssmtp_mailer.commands.common import common_options, json_option, print_json, settings
from ssmtp_mailer.dkimkey import ED25519, RSA
from ssmtp_mailer.dnsrecords import dkim_record
from ssmtp_mailer.errors import CantCreateError, UsageError

_SELECTOR_HELP = "DNS selector, e.g. rsa2026 (the record is SELECTOR._domainkey.DOMAIN)."


@click.group("dkim")
@common_options
def dkim_group() -> None:
    """DKIM keys for signing a route's mail."""


def write_private_key(path: Path, pem: bytes, *, force: bool, gid: int | None = None) -> None:
    """Write `pem` to `path` atomically, mode 0600, or 0640 of group `gid` (and a new
    directory 0750 of it): never replace a file without `force`."""
    directory = path.parent
    try:
        if not directory.is_dir():
            directory.mkdir(parents=True, mode=0o700 if gid is None else 0o750)
            if gid is not None:
                os.chown(directory, -1, gid)
                os.chmod(directory, 0o750)  # the umask may have taken the group's bits
    except OSError as exc:
        raise CantCreateError(str(directory), f"cannot create: {exc.strerror or exc}") from None
    if path.exists() and not force:
        raise CantCreateError(str(path), "exists", hint="pass --force to replace it")
    temp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        if gid is not None:  # the group first, then its read bit: never readable by others
            os.fchown(fd, -1, gid)
            os.fchmod(fd, 0o640)
        with open(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # fails if the file appeared meanwhile: nothing is replaced
            os.unlink(temp)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise CantCreateError(str(path), "exists", hint="pass --force to replace it") from None
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise CantCreateError(str(path), f"cannot write: {exc.strerror or exc}") from None


@dkim_group.command("keygen")
@common_options
@json_option
@click.option("--domain", required=True, help="The signing domain (d=), e.g. example.com.")
@click.option("--selector", required=True, help=_SELECTOR_HELP)
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="Key type; publish one of each and list both to sign twice (RFC 8463).",
)
@click.option(
    "--bits",
    type=click.IntRange(1024, 4096),
    default=2048,
    show_default=True,
    help="RSA key size.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key file (default: ssl_dir/dkim-SELECTOR.DOMAIN.pem).",
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@click.option(
    "--group",
    help="Make the key 0640 of this group (`mail`: the listener, once it is listen_user,"
    " signs with it too); default 0600.",
)
def keygen(
    as_json: bool,
    domain: str,
    selector: str,
    algorithm: str,
    bits: int,
    out: Path | None,
    force: bool,
    group: str | None,
) -> None:
    """Write a PKCS#8 private key (mode 0600, or 0640 of --group) and print the TXT record."""
    from ssmtp_mailer.config.values import parse_mail_domain, parse_selectors
    from ssmtp_mailer.keytool import generate

    try:
        domain = parse_mail_domain(domain)
    except ValueError as exc:
        raise UsageError("--domain", str(exc)) from None
    try:
        (selector,) = parse_selectors(selector)
    except ValueError as exc:
        raise UsageError("--selector", str(exc)) from None
    if out is None:
        from ssmtp_mailer.config.loader import load_global

        # Only [global]: the tree may name this very key and not validate until it exists.
        out = load_global(settings().config_path).ssl_dir / f"dkim-{selector}.{domain}.pem"
    elif not out.is_absolute():
        out = Path.cwd() / out
    if out.exists() and not force:
        raise CantCreateError(str(out), "exists", hint="pass --force to replace it")
    gid = None
    if group is not None:
        import grp

        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError("--group", f"no such group: {group}") from None
    pair = generate(ED25519 if algorithm == "ed25519" else RSA, bits)
    write_private_key(out, pair.private_pem, force=force, gid=gid)
    mode = "mode 0600" if group is None else f"mode 0640, group {group}"
    if group is not None:
        st = out.parent.stat()
        search = 0o010 if st.st_gid == gid else 0o001  # the group's bit, or everyone's
        if not st.st_mode & search:
            click.echo(
                f"warning: group {group} cannot enter {out.parent}: the key is out of its"
                f" reach until it can (chgrp {group} {out.parent}; chmod 0750 {out.parent})",
                err=True,
            )
    record = dkim_record(selector, domain, pair.key_type, pair.public_b64)
    if as_json:
        print_json(
            {
                "file": str(out),
                "domain": domain,
                "selector": selector,
                "algorithm": pair.algorithm,
                "bits": pair.bits,
                "name": record.name,
                "value": record.value,
                "strings": record.strings,
                "zone": record.zone_line(),
            }
        )
        return
    size = f"RSA {pair.bits} bits" if pair.algorithm == RSA else "Ed25519"
    click.echo(f"wrote {out} ({size}, {mode})")
    click.echo("")
    click.echo("Publish this DNS TXT record:")
    click.echo(f"  name:  {record.name}")
    click.echo(f"  value: {record.value}")
    click.echo("")
    click.echo("As a zone-file line (long values split into 255-octet strings):")
    click.echo(record.zone_line())
    click.echo("")
    click.echo(f"Then sign with it in [domain:{domain}] (add to existing lists to sign twice):")
    click.echo(f"  dkim_selector = {selector}")
    click.echo(f"  dkim_key_file = {out}")
