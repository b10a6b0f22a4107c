"""The least-privilege read-only grants for attribution: exactly the columns attribution.py reads, per
schema shape, and the secret columns a role must never be able to read (checked by `lemmy check`).

Column names are from the peers' schemas: pict-rs 0.5 (robinst/pict-rs@31049d3
src/repo/postgres/schema.rs), Lemmy 0.19.x (crates/db_schema/src/schema.rs) and 1.0.0-alpha.6+
(crates/db_schema_file/src/schema.rs). Whole-table grants would expose `aliases.token` and
`local_image.pictrs_delete_token` (pict-rs delete tokens: anyone holding one deletes the image),
`community.private_key` and `person.private_key` (federation signing keys), and `local_user`'s password
hash, e-mail and 2FA secret.
"""

from __future__ import annotations

PICTRS_COLUMNS = {
    "hashes": ("hash", "identifier", "motion_identifier", "created_at"),
    "variants": ("hash", "variant", "identifier"),
    "aliases": ("alias", "hash"),  # never token
    "proxies": ("url", "alias"),
}

LEMMY_SHAPES = ("0.19.0-0.19.3", "0.19.4+", "1.0")


def lemmy_shape(version: str) -> str | None:
    """The shape of Lemmy's tables for a version as people write it (0.19.5, v0.19.3, 1.0.0-beta.2) or a
    shape's own name; None for a version none of the shapes is (before 0.19, or a later major)."""
    import re

    text = version.strip().removeprefix("v")
    if text in LEMMY_SHAPES:
        return text
    found = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.].*)?", text)
    if not found:
        return None
    major, minor, patch = int(found[1]), int(found[2]), int(found[3] or 0)
    if major == 0 and minor == 19:
        return "0.19.4+" if patch >= 4 else "0.19.0-0.19.3"
    if major == 1 and minor == 0:
        return "1.0"
    return None


def lemmy_columns(shape: str) -> dict[str, tuple[str, ...]]:
    if shape not in LEMMY_SHAPES:
        raise ValueError(f"unknown Lemmy shape {shape!r}: {', '.join(LEMMY_SHAPES)}")
    new = shape == "1.0"
    pub, actor = ("published_at", "ap_id") if new else ("published", "actor_id")
    columns = {
        "instance": ("id", "domain"),
        "person": ("id", "name", "display_name", actor, pub, "local", "bot_account", "deleted", "instance_id"),
        "local_user": ("id", "person_id"),
        "community": ("id", "name", "title", actor, "instance_id"),
        "post": (
            "id",
            "name",
            "url",
            "thumbnail_url",
            "body",
            "creator_id",
            "community_id",
            pub,
            "removed",
            "deleted",
            "ap_id",
        ),  # fmt: skip
        "comment": ("id", "post_id", "creator_id", "content", pub, "removed", "deleted", "ap_id"),
        "private_message": ("id", "creator_id", "recipient_id", "content", pub, "deleted", "ap_id"),
    }
    if shape == "0.19.0-0.19.3":
        columns["image_upload"] = ("local_user_id", "pictrs_alias", "published")
    elif shape == "0.19.4+":
        columns["local_image"] = ("local_user_id", "pictrs_alias", "published")
    else:
        columns["local_image"] = ("pictrs_alias", "published_at", "person_id", "thumbnail_for_post_id")
    return columns


# (table, column): what must stay unreadable. Those a shape lacks are simply absent there.
SECRET_COLUMNS = {
    "pictrs": (("aliases", "token"),),
    "lemmy": (
        ("community", "private_key"),
        ("person", "private_key"),
        ("site", "private_key"),
        ("local_user", "password_encrypted"),
        ("local_user", "email"),
        ("local_user", "totp_2fa_secret"),
        ("local_image", "pictrs_delete_token"),
        ("image_upload", "pictrs_delete_token"),
        ("secret", "jwt_secret"),
        ("login_token", "token"),
        ("password_reset_request", "token"),
    ),
}


def grant_sql(columns: dict[str, tuple[str, ...]], role: str = "mirror_scan_ro") -> str:
    return "\n".join(f"GRANT SELECT ({', '.join(cols)}) ON {table} TO {role};" for table, cols in columns.items())
