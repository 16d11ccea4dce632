"""Bootstraps pip in ansible-test's sanity venvs without its download host.

ansible-test fetches get-pip.py from a CI file server that machines without general web
access cannot reach; it uses a cached copy when one exists, and this file is installed as
that copy. Same contract: install pip (from the interpreter's bundled wheel), then the
packages asked for, from the package index.
"""
import ensurepip
import os
import ssl
import subprocess
import sys

# get-pip.py's own flags, which pip does not know.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

ensurepip.bootstrap(upgrade=True)
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
# ansible-test runs this with a reduced environment: keep trusting the CAs the host trusts.
ca_bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
if os.path.exists(ca_bundle):
    args = ["--cert", ca_bundle, *args]
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
