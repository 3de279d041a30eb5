"""The servers the gateway is measured against (rows A, C and D's stub)."""
