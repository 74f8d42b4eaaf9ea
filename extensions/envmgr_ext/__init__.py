"""The jupyter-server extension that runs on every runtime (notebook sync and locks).

It arrives with the notebooks issue; the package exists so runtimes can enable it then."""
