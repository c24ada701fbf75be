"""The dashboard's page, installed as the package `zai_proxy.static`.

pyproject.toml maps this directory into the package, so a wheel carries a copy and an
editable install points here; this file makes it a regular package, which is what an
editable install needs to find it.  The dashboard serves the files beside it.
"""
