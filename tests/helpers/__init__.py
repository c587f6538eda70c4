"""Helpers shared by several test files (a test file imports these, never another test file)."""
