"""Built-in target profiles, one TOML file per target (loaded by edgekit.host.profiles)."""
import os

BUILTIN_DIR = os.path.dirname(os.path.abspath(__file__))
