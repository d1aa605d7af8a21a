"""armhf-agent: supervises a native armhf dockerd on 64-bit Arm hosts."""

__version__ = "0.1.0"
