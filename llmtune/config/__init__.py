"""Configuration: the typed schema (schema.py), building and checking it (build.py,
validate.py), reading and writing it (load.py), and the command line (overrides.py, help.py)."""
