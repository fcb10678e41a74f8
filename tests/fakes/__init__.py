"""Test doubles that speak real wire protocols (a loopback Discord)."""
