"""Delivery to smarthosts (and later MX hosts): the only code that opens SMTP sockets."""
