"""Stand-in for `aim`: semilearn 0.3.2 imports it at load time, the peer runs never log to it (README.md here)."""


def __getattr__(name):
    if name.startswith("__"):  # what the import system and introspection look up: absent, as on any module
        raise AttributeError(name)
    raise RuntimeError(f"aim.{name}: the aim logger is not installed on this machine (benchmarks/peers/stubs)")
