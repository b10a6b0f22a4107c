"""The subset of pict-rs's and Lemmy's PostgreSQL schemas that attribution reads, in the shapes of the
versions it supports (from pict-rs's postgres migrations and LemmyNet/lemmy's migrations and
schema.rs), plus generated rows. Only what the code reads is here; column names and types follow the
sources.

Lemmy shapes:
  0.19.3  image_upload(local_user_id NOT NULL, pictrs_alias, pictrs_delete_token, published); person.actor_id
  0.19.5  local_image(local_user_id NULL-able, pictrs_alias, pictrs_delete_token, published)
  1.0     local_image(pictrs_alias, published_at, person_id, thumbnail_for_post_id); ap_id and *_at everywhere
"""

from __future__ import annotations

PICTRS_SCHEMA = """
CREATE TABLE hashes (hash text PRIMARY KEY, identifier text NOT NULL UNIQUE, motion_identifier text UNIQUE,
                     created_at timestamp NOT NULL DEFAULT now(), blurhash text);
CREATE TABLE aliases (alias varchar(60) PRIMARY KEY, hash text NOT NULL REFERENCES hashes ON DELETE CASCADE,
                      token varchar(60) NOT NULL);
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
        "0.19.3": """CREATE TABLE image_upload (id serial PRIMARY KEY,
            local_user_id int NOT NULL REFERENCES local_user ON UPDATE CASCADE ON DELETE CASCADE,
            pictrs_alias text NOT NULL UNIQUE, pictrs_delete_token text NOT NULL,
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
                     deleted boolean NOT NULL DEFAULT false, private_key text,
                     instance_id int NOT NULL REFERENCES instance);
CREATE TABLE local_user (id serial PRIMARY KEY, person_id int NOT NULL REFERENCES person,
                         password_encrypted text NOT NULL, email text, admin boolean NOT NULL DEFAULT false);
CREATE TABLE community (id serial PRIMARY KEY, name varchar(255) NOT NULL, title varchar(255) NOT NULL,
                        {actor} varchar(255) NOT NULL UNIQUE, {pub} timestamptz NOT NULL DEFAULT now(),
                        instance_id int NOT NULL REFERENCES instance);
CREATE TABLE post (id serial PRIMARY KEY, name varchar(200) NOT NULL, url varchar(2000), body text,
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


# The least-privilege grants the README documents: no password hashes, e-mails or private keys.
LEMMY_GRANTS = """
GRANT SELECT ON instance, community, post, comment, private_message TO {role};
GRANT SELECT (id, name, display_name, {actor}, {pub}, local, bot_account, deleted, instance_id) ON person TO {role};
GRANT SELECT (id, person_id) ON local_user TO {role};
GRANT SELECT ON {uploads} TO {role};
"""
PICTRS_GRANTS = "GRANT SELECT ON hashes, aliases, variants, proxies TO {role};"


def lemmy_grants(shape: str, role: str) -> str:
    new = shape == "1.0"
    return LEMMY_GRANTS.format(
        role=role,
        actor="ap_id" if new else "actor_id",
        pub="published_at" if new else "published",
        uploads="image_upload" if shape == "0.19.3" else "local_image",
    )


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
