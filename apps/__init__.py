"""Front-ends built on rtopt's public API."""
