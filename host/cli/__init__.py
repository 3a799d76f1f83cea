"""The `edgekit` command line: thin click commands over library functions."""
