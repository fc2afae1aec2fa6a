"""The property tests' hypothesis profile is loaded here, before any of their modules
(``profiles.py`` says which profile and why)."""

from tests.unit.property import profiles  # noqa: F401  (registers and loads the profile)
