"""`quarantine report`: what an admin needs to file a report to a hotline by hand, in one private directory.
Small Lemmy admins are not registered with NCMEC's API; they fill the CyberTipline's web form, gathering the
file, its hashes, when and by whom it was uploaded and where it was posted from several places. The package
is `quarantine extract`'s directory (the bytes, verified, and the item's record) with `hashes.txt` and
`report.txt`: the form's sections in its order, filled from the record, ready to paste. Nothing is sent,
displayed or decoded; what the tool cannot know (the reporter's contact, an IP address) is said as such.

report_text is pure: the item's record (cli/quarantine.item_record) and its hashes in, text out."""

from __future__ import annotations

from typing import Any

HOTLINES = {
    "ncmec": "NCMEC CyberTipline (report.cybertip.org), for providers in the United States (18 U.S.C. 2258A)",
    "generic": "the hotline of your country (INHOPE lists them: inhope.org)",
}


def hashes_text(record: dict[str, Any], md5: str | None, pdqs: list[tuple[str, int]]) -> str:
    lines = [f"sha256  {record.get('sha256')}", f"md5     {md5 or '(not recorded)'}"]
    lines += [f"pdq     {value}  (quality {quality})" for value, quality in pdqs] or ["pdq     (none recorded)"]
    return "\n".join(lines) + "\n"


def _person(who: dict[str, Any] | None) -> str:
    if not who:
        return "unknown"
    parts = [f"{who.get('name')}@{who.get('instance') or '?'}"]
    if who.get("display_name"):
        parts.append(f"display name {who['display_name']}")
    if who.get("actor_id"):
        parts.append(f"profile {who['actor_id']}")
    if who.get("account_age_days") is not None:
        parts.append(f"account {who['account_age_days']} day(s) old at the time")
    return ", ".join(str(p) for p in parts)


def report_text(record: dict[str, Any], hotline: str, md5: str | None, pdqs: list[tuple[str, int]],
                file_name: str) -> str:  # fmt: skip
    """The report's text, section by section as the CyberTipline's form asks (the generic hotline: the same
    facts, in the same order)."""
    attribution = record.get("attribution") or {}
    uploads = attribution.get("uploads") or []
    posts = attribution.get("posts") or []
    comments = attribution.get("comments") or []
    messages = attribution.get("private_messages") or []
    ledger = record.get("ledger") or {}
    verdict = record.get("verdict") or {}
    labels = [x for x in verdict.get("labels", []) if x not in ("match", "subject")]
    first_upload = min((u.get("uploaded_at") for u in uploads if u.get("uploaded_at")), default=None)
    out = [
        f"Report package for quarantine item {record.get('id')}, for {HOTLINES[hotline]}.",
        "Prepared by mirror-scan from its records. Check each line before you paste it; fill in what it cannot know.",
        "",
        "1. Reporter",
        "   Reporting person and organisation: (fill in: your name, your instance, an e-mail and a phone number)",
        "",
        "2. Incident",
        "   Type: apparent child sexual abuse material (choose the form's matching incident type)",
        f"   Date and time of the incident (the upload): {first_upload or 'not known'}"
        f" (quarantined {record.get('quarantined_at')})",
        "",
        "3. Where it was (the internet details)",
    ]
    places = [f"   post {p.get('id')}: {p.get('link') or '(no link recorded)'}"
              + (f" in !{(p.get('community') or {}).get('name')}@{(p.get('community') or {}).get('instance')}"
                 if p.get("community") else "") + f", published {p.get('published')}" for p in posts]  # fmt: skip
    places += [f"   comment {c.get('id')} on \"{c.get('post_title')}\": {c.get('link') or '(no link recorded)'}"
               f", published {c.get('published')}" for c in comments]  # fmt: skip
    places += [f"   private message {m.get('id')}, sent {m.get('published')}" for m in messages]
    out += places or ["   not known (attribution was not configured or found no use)"]
    out += (
        [f"   Object in the instance's storage: {ledger.get('remote')}/{ledger.get('key')}"]
        if ledger.get("key")
        else []
    )
    out += ["", "4. The person who uploaded it (the reported person)"]
    people = {_person(u.get("uploader")) for u in uploads if u.get("uploader")}
    out += [f"   {p}" for p in sorted(people)] or ["   not known"]
    out += ["   IP address: not recorded by mirror-scan (Lemmy keeps none by default)"]
    out += [
        "",
        "5. The file",
        f"   File name: {file_name} (in this directory); size {record.get('size')} bytes",
        f"   sha256 {record.get('sha256')}",
        f"   md5 {md5 or '(not recorded)'}",
        *[f"   PDQ {value} (quality {quality})" for value, quality in pdqs],
        "   Was the file viewed by the reporting company? No: it was classified by an automated tool"
        f" ({record.get('model_id')}, policy {record.get('policy_id')}) and never displayed.",
        f"   Publicly available: yes, until it was quarantined at {record.get('quarantined_at')}.",
        "",
        "6. What was done",
        *[f"   {h.get('at')}  {h.get('state')}" for h in record.get("history", [])],
        *[f"   {a.get('action')}: {a.get('state')}" for a in record.get("actions", [])],
        "",
        "7. Additional information",
        f"   The scanner's labels: {', '.join(labels) or '-'}; its checks: {verdict.get('checks')}",
        "",
    ]
    return "\n".join(out)
