"""The subset of pict-rs's and Lemmy's PostgreSQL schemas that attribution reads, in the shapes of the
versions it supports (from pict-rs's postgres migrations and LemmyNet/lemmy's migrations and
schema.rs), plus generated rows. Only what the code reads is here; column names and types follow the
sources.

Lemmy shapes:
  0.19.3  image_upload(local_user_id NOT NULL, pictrs_alias PRIMARY KEY, pictrs_delete_token, published) (no id
          column since 2023-10-24-030352_change_primary_keys); person.actor_id; post.url varchar(512)
  0.19.5  local_image(local_user_id NULL-able, pictrs_alias, pictrs_delete_token, published); post.url 512
  1.0     local_image(pictrs_alias, published_at, person_id, thumbnail_for_post_id) (1.0.0-alpha.6+); ap_id
          and *_at everywhere; post.url varchar(2000)
The secret columns a read-only role must not reach are here too (community and person private_key,
local_user's password hash, e-mail and 2FA secret, the delete tokens, the secret table), so a test can
prove the documented grants keep them out of reach.
"""

from __future__ import annotations

PICTRS_SCHEMA = """
CREATE TABLE hashes (hash text PRIMARY KEY, identifier text NOT NULL UNIQUE, motion_identifier text UNIQUE,
                     created_at timestamp NOT NULL DEFAULT now(), blurhash text);
CREATE TABLE aliases (alias text PRIMARY KEY, hash text NOT NULL REFERENCES hashes, token text NOT NULL);
CREATE INDEX aliases_hash_index ON aliases (hash);
CREATE TABLE variants (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), hash text NOT NULL REFERENCES hashes,
                       variant text NOT NULL, identifier text NOT NULL, accessed timestamp NOT NULL DEFAULT now());
CREATE TABLE proxies (url text PRIMARY KEY, alias text NOT NULL REFERENCES aliases, accessed timestamp NOT NULL
                      DEFAULT now());
CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);
"""

SHAPES = ("0.19.3", "0.19.5", "1.0")


def lemmy_schema(shape: str) -> str:
    new = shape == "1.0"
    pub = "published_at" if new else "published"
    actor = "ap_id" if new else "actor_id"
    uploads = {
        "0.19.3": """CREATE TABLE image_upload (
            local_user_id int NOT NULL REFERENCES local_user ON UPDATE CASCADE ON DELETE CASCADE,
            pictrs_alias text PRIMARY KEY, pictrs_delete_token text NOT NULL,
            published timestamptz NOT NULL DEFAULT now());""",
        "0.19.5": """CREATE TABLE local_image (local_user_id int REFERENCES local_user ON UPDATE CASCADE
            ON DELETE CASCADE, pictrs_alias text PRIMARY KEY, pictrs_delete_token text NOT NULL,
            published timestamptz NOT NULL DEFAULT now());
            CREATE TABLE remote_image (id serial PRIMARY KEY, link text NOT NULL UNIQUE,
            published timestamptz NOT NULL DEFAULT now());""",
        "1.0": """CREATE TABLE local_image (pictrs_alias text PRIMARY KEY,
            published_at timestamptz NOT NULL DEFAULT now(), person_id int REFERENCES person,
            thumbnail_for_post_id int REFERENCES post);""",
    }[shape]
    return f"""
CREATE TABLE instance (id serial PRIMARY KEY, domain varchar(255) NOT NULL UNIQUE,
                       {pub} timestamptz NOT NULL DEFAULT now());
CREATE TABLE person (id serial PRIMARY KEY, name varchar(255) NOT NULL, display_name varchar(255),
                     {actor} varchar(255) NOT NULL UNIQUE, {pub} timestamptz NOT NULL DEFAULT now(),
                     local boolean NOT NULL DEFAULT true, bot_account boolean NOT NULL DEFAULT false,
                     deleted boolean NOT NULL DEFAULT false, private_key text, public_key text,
                     instance_id int NOT NULL REFERENCES instance);
CREATE TABLE local_user (id serial PRIMARY KEY, person_id int NOT NULL REFERENCES person,
                         password_encrypted text{" " if new else " NOT NULL"}, email text, totp_2fa_secret text,
                         admin boolean NOT NULL DEFAULT false);
CREATE TABLE community (id serial PRIMARY KEY, name varchar(255) NOT NULL, title varchar(255) NOT NULL,
                        {actor} varchar(255) NOT NULL UNIQUE, {pub} timestamptz NOT NULL DEFAULT now(),
                        private_key text, public_key text NOT NULL DEFAULT 'public',
                        instance_id int NOT NULL REFERENCES instance);
CREATE TABLE secret (id serial PRIMARY KEY, jwt_secret varchar NOT NULL DEFAULT gen_random_uuid()::text);
INSERT INTO secret DEFAULT VALUES;
CREATE TABLE post (id serial PRIMARY KEY, name varchar(200) NOT NULL, url varchar({2000 if new else 512}), body text,
                   creator_id int NOT NULL REFERENCES person, community_id int NOT NULL REFERENCES community,
                   removed boolean NOT NULL DEFAULT false, deleted boolean NOT NULL DEFAULT false,
                   {pub} timestamptz NOT NULL DEFAULT now(), thumbnail_url text, ap_id varchar(255) NOT NULL);
CREATE INDEX idx_post_published ON post ({pub});
CREATE TABLE comment (id serial PRIMARY KEY, creator_id int NOT NULL REFERENCES person,
                      post_id int NOT NULL REFERENCES post, content text NOT NULL,
                      removed boolean NOT NULL DEFAULT false, deleted boolean NOT NULL DEFAULT false,
                      {pub} timestamptz NOT NULL DEFAULT now(), ap_id varchar(255) NOT NULL);
CREATE TABLE private_message (id serial PRIMARY KEY, creator_id int NOT NULL REFERENCES person,
                              recipient_id int NOT NULL REFERENCES person, content text NOT NULL,
                              deleted boolean NOT NULL DEFAULT false, {pub} timestamptz NOT NULL DEFAULT now(),
                              ap_id varchar(255) NOT NULL);
{uploads}
"""


# The least-privilege grants the README documents (`mirror-scan lemmy grants`): exactly the columns read.
GRANT_SHAPE = {"0.19.3": "0.19.0-0.19.3", "0.19.5": "0.19.4+", "1.0": "1.0"}


def lemmy_grants(shape: str, role: str) -> str:
    from mirror_scan.moderation.grants import grant_sql, lemmy_columns

    return grant_sql(lemmy_columns(GRANT_SHAPE[shape]), role)


def pictrs_grants(role: str) -> str:
    from mirror_scan.moderation.grants import PICTRS_COLUMNS, grant_sql

    return grant_sql(PICTRS_COLUMNS, role)


def upload_row(
    shape: str,
    alias: str,
    person_id: int | None,
    local_user_id: int | None,
    when: str,
    thumbnail_for_post: int | None = None,
) -> tuple[str, tuple]:
    if shape == "1.0":
        return (
            "INSERT INTO local_image (pictrs_alias, published_at, person_id, thumbnail_for_post_id) "
            "VALUES (%s, %s, %s, %s)",
            (alias, when, person_id, thumbnail_for_post),
        )
    table = "image_upload" if shape == "0.19.3" else "local_image"
    return (
        f"INSERT INTO {table} (local_user_id, pictrs_alias, pictrs_delete_token, published) VALUES (%s, %s, %s, %s)",
        (local_user_id, alias, "delete-token", when),
    )
