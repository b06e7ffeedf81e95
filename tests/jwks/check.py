#!/usr/bin/env python3
"""Other services verify rosterd's tokens with stock libraries and no secret.

For each asymmetric algorithm (EdDSA, ES256, RS256), starts the rosterd
binary given as the first argument on 127.0.0.1 with a fresh database and
config (it makes its key on this first run), registers and logs in a user,
then verifies the access token
  1. with PyJWT's PyJWKClient pointed at /.well-known/jwks.json, and
  2. as a Django service would: djangorestframework-simplejwt configured
     with SIMPLE_JWT ALGORITHM and JWK_URL (no signing or verifying key),
     through its JWTAuthentication.
A token with a tampered payload must fail both. Exits non-zero on any
failure. Needs: pip install -r tests/jwks/requirements.txt

Usage: python tests/jwks/check.py target/debug/rosterd
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

import django
from django.conf import settings

ALGORITHMS = ["EdDSA", "ES256", "RS256"]


def call(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def serve(binary, work, algorithm):
    config = os.path.join(work, "c.toml")
    with open(config, "w") as f:
        f.write('[auth]\nsecret = "%s"\npbkdf2_iterations = 1000\n' % os.urandom(24).hex())
    os.chmod(config, 0o600)
    env = dict(os.environ, ROSTERD_AUTH_ALGORITHM=algorithm)
    child = subprocess.Popen(
        [binary, "--config", config, "--db", os.path.join(work, "d.sqlite3"),
         "serve", "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    for line in child.stdout:
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return child, "http://127.0.0.1:%s" % match.group(1)
    raise SystemExit("rosterd did not start with %s" % algorithm)


def tampered(token):
    import base64
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["user_id"] = "999"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join([header, forged, signature])


def simplejwt(algorithm, jwks_url, access, user_id):
    """A Django service with SIMPLE_JWT = {ALGORITHM, JWK_URL} and no key."""
    settings.configure(
        SECRET_KEY="a-django-service-that-never-sees-rosterd-secrets",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "rest_framework", "rest_framework_simplejwt"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        SIMPLE_JWT={"ALGORITHM": algorithm, "JWK_URL": jwks_url,
                    "SIGNING_KEY": None, "VERIFYING_KEY": None},
        USE_TZ=True,
    )
    django.setup()
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import InvalidToken

    validated = JWTAuthentication().get_validated_token(access.encode())
    assert validated["user_id"] == user_id, dict(validated)
    try:
        JWTAuthentication().get_validated_token(tampered(access).encode())
        raise SystemExit("simplejwt accepted a tampered %s token" % algorithm)
    except InvalidToken:
        pass


def check(binary, algorithm):
    import jwt

    with tempfile.TemporaryDirectory() as work:
        child, base = serve(binary, work, algorithm)
        try:
            user = {"username": "verifier", "email": "v@example.com",
                    "password": "a-long-enough-passphrase-42"}
            created = call(base + "/api/users", user)
            access = call(base + "/api/token", user)["access"]
            jwks_url = base + "/.well-known/jwks.json"

            # 1. PyJWT + PyJWKClient, from the JWKS alone.
            key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(access)
            claims = jwt.decode(access, key.key, algorithms=[algorithm])
            assert claims["user_id"] == str(created["id"]), claims
            try:
                jwt.decode(tampered(access), key.key, algorithms=[algorithm])
                raise SystemExit("PyJWT accepted a tampered %s token" % algorithm)
            except jwt.InvalidSignatureError:
                pass

            # 2. simplejwt with ALGORITHM + JWK_URL, as a Django service
            # (a process of its own: Django is configured once).
            subprocess.run(
                [sys.executable, __file__, "--simplejwt", algorithm, jwks_url, access,
                 str(created["id"])],
                check=True,
            )
            print("%s: PyJWT (PyJWKClient) and simplejwt (JWK_URL) verified user %s; "
                  "a tampered token was refused by both" % (algorithm, created["id"]))
        finally:
            child.terminate()
            child.wait(timeout=30)


def main():
    if sys.argv[1] == "--simplejwt":
        simplejwt(*sys.argv[2:6])
        return
    binary = os.path.abspath(sys.argv[1])
    for algorithm in ALGORITHMS:
        check(binary, algorithm)


if __name__ == "__main__":
    main()
