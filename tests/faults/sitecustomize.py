"""Loaded by every Python process started with this folder on PYTHONPATH (the sweep
tests' Ray workers): installs the fault injector when BONESEG_INJECT_FAULT asks for one."""
import os

if os.environ.get("BONESEG_INJECT_FAULT"):
    from fault_injector import install

    install()
