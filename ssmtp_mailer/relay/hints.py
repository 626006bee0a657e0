"""One-line hints for the relay failures users meet most (SPEC §6), for the engine and `test`."""

from __future__ import annotations

import re

TOKEN = (
    "the relay refused the OAuth2 token: check that oauth2_token_command prints a fresh"
    " access token (not a refresh token) with the mail scope, for this username"
)
CREDENTIALS = (
    "check the password and the username format: some relays want the user without the"
    " domain (Stalwart: `noreply`, not `noreply@example.com`), OCI Email Delivery wants the"
    " full OCID SMTP user (ocid1.user...@ocid1.tenancy...)"
)
RELAY_DENIED = (
    "the relay does not let this client relay: authenticate (set username and a password)"
    " and use the submission port 587 (or 465 with use_ssl = true), not port 25"
)
AUTH_REQUIRED = "the relay wants authentication: set username and a password for this route"
PORT25_BLOCKED = (
    "many cloud providers (OCI, AWS, GCP, Azure) block outbound port 25: use the submission"
    " port 587 (STARTTLS) or 465 (use_ssl = true)"
)
DIRECT_PORT25_BLOCKED = (
    "outbound port 25 looks blocked: many cloud providers (OCI, AWS, GCP, Azure) block it;"
    " ask the provider to open it, or send through a relay on port 587 (delivery_mode ="
    " relay, or hybrid to fall back to it)"
)
CERTIFICATE = (
    "if the relay uses a private CA set ssl_ca_file = /path/to/ca.pem; for a self-signed"
    " certificate pin it with tls_fingerprint (`ssmtp-mailer test` prints the value)"
)
SENDER_AUTH = (
    "the receiver's SPF/DKIM/DMARC checks on your domain failed: run `ssmtp-mailer dns check"
    " YOUR-DOMAIN --ip YOUR-PUBLIC-ADDRESS` and publish the records it prints"
)
PLAINTEXT_AUTH = (
    "enable use_starttls = true (port 587) or use_ssl = true (port 465); only on a trusted"
    " network set allow_plaintext_auth = true"
)
SMTPUTF8 = "use an ASCII address, or a relay that offers SMTPUTF8 (RFC 6531)"

# Left to re's own cache: compiled on the first failure, not on every sendmail run.
_RELAY_DENIED = r"relay(ing)? (access )?(denied|not (allowed|permitted))|access denied"
# RFC 7372 §3: 5.7.20-5.7.26 are DKIM, SPF, reverse DNS and DMARC failures, 5.7.27 a null MX.
_SENDER_AUTH = r"\b(spf|dkim|dmarc)\b|\b5\.7\.2[0-7]\b"


def for_reply(code: int, text: str, *, port: int | None = None, mx: bool = False) -> str | None:
    """The hint for an SMTP reply, or None when none is known. `mx`: the reply of a
    recipient's MX (direct delivery), where advice about a relay's AUTH or port is wrong."""
    if mx:
        return SENDER_AUTH if code >= 500 and re.search(_SENDER_AUTH, text, re.I) else None
    if code == 535 or (code == 454 and "auth" in text.lower()):
        return CREDENTIALS
    if code == 530 or (code == 550 and "authentication required" in text.lower()):
        return AUTH_REQUIRED
    if code in (550, 551, 553, 554) and re.search(_RELAY_DENIED, text, re.I):
        return RELAY_DENIED
    if code >= 500 and re.search(_SENDER_AUTH, text, re.I):
        return SENDER_AUTH
    if port == 25 and code == 554:
        return RELAY_DENIED
    return None


def for_timeout(port: int) -> str | None:
    """The hint for a connection that timed out."""
    if port == 25:
        return PORT25_BLOCKED
    return None
