"""Engines that generate text and report ℓ2 norms."""
