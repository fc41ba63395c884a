"""Fault-injection tests: kills, signals, damaged files, full disks, concurrent writers, divergence."""
