"""Credentials never leave in a URI: `redact` masks them in any text that is printed,
logged or tagged, and `credentials_in` lets settings refuse a URI that carries them."""
from __future__ import annotations

import re

# scheme://user:secret@host (or scheme://token@host): the user-info part, up to the first @
# (pasted secrets hold / and +, so it may run past a /: masking too much is the safe side)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^@\s'\"]+?)@")
# ?access_key=...&secret_key=... and the like (pyarrow's S3 URIs, presigned URLs, DSNs)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:access_key|secret_key|session_token|aws_access_key_id|aws_secret_access_key|"
    r"password|passwd|pwd|token|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
    r"(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: str) -> str:
    """`text` with every URI's user-info and secret query values replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


def credentials_in(uri: str) -> bool:
    """Whether `uri` carries a secret: a user:secret@ part or a secret query parameter."""
    return any(":" in m["info"] for m in _USERINFO.finditer(uri)) or bool(_SECRET_PARAM.search(uri))
