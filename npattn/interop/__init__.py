"""Bridges to other frameworks (optional imports): ``npattn.interop.torch``."""
