"""``python3 -m edgekit.device``: the agent's command line."""
from .cli import main

main()
