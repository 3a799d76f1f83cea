# The one place the edgekit version is written; setup.cfg and the host read it from here.
__version__ = "0.1.0"
