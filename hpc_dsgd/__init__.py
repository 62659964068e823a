"""hpc_dsgd: decentralized SGD with consensus-distance measurement and control, as an MPI batch application."""
__version__ = "0.1.0"
