"""ssmtp-mailer: a send-only mail transfer agent."""

__version__ = "0.1.0"
