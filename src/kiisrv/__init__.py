"""kiisrv: the firmware build server behind the Input Club Configurator."""

__version__ = "0.1.0"
