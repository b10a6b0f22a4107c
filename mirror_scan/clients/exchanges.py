"""Hash lists fed by the signal exchanges of python-threatexchange (PyPI `threatexchange`, what HMA's
fetcher drives: exchanges/signal_exchange_api.py): Meta's ThreatExchange, NCMEC, StopNCII, Tech Against
Terrorism, a local file, and its static sample. A subscription is a hash list of its own, replaced in one
step by every `hashlist fetch` (a running watch or serve applies it from its next batch).

Fetching: `api.fetch_iter(signal_types, checkpoint)` yields deltas; they are merged into the fetched
state (`naive_fetch_merge`), which `naive_convert_to_signal_type` turns into signals of the types we
match: pdq, video_md5, video_sha256 (the md5/sha256 of a file, ours too) and vpdq. The checkpoint and
the state are kept in the ledger (JSON), so the next fetch asks only for what changed; one that cannot be
restored starts afresh. Credentials never pass through mirror-scan: python-threatexchange reads them
from its own environment variables and files (TX_ACCESS_TOKEN or ~/.txtoken; TX_NCMEC_CREDENTIALS or
~/.tx_ncmec_credentials; TX_STOPNCII_KEYS; PYTX_TAT_CREDENTIALS), and its messages pass through scrub().
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from mirror_scan.errors import MirrorScanError, install_hint
from mirror_scan.lists.formats import UPSTREAM_TYPES, check_value, decode_vpdq, encode_vpdq

API_NAMES = ("local_file", "sample", "fb_threatexchange", "ncmec", "stop_ncii", "tat")


class ExchangeError(MirrorScanError):
    """An exchange cannot be used as asked (not installed, unknown, misconfigured, refused)."""


def _require():
    try:
        import threatexchange  # noqa: F401
    except ImportError:
        raise ExchangeError(
            "signal exchanges need python-threatexchange",
            hint=install_hint("exchange"),
        ) from None


def api_class(name: str):
    _require()
    from threatexchange.exchanges.impl.fb_threatexchange_api import FBThreatExchangeSignalExchangeAPI
    from threatexchange.exchanges.impl.file_api import LocalFileSignalExchangeAPI
    from threatexchange.exchanges.impl.ncmec_api import NCMECSignalExchangeAPI
    from threatexchange.exchanges.impl.static_sample import StaticSampleSignalExchangeAPI
    from threatexchange.exchanges.impl.stop_ncii_api import StopNCIISignalExchangeAPI
    from threatexchange.exchanges.impl.techagainstterrorism_api import TATSignalExchangeAPI

    apis = {
        cls.get_name(): cls
        for cls in (
            LocalFileSignalExchangeAPI,
            StaticSampleSignalExchangeAPI,
            FBThreatExchangeSignalExchangeAPI,
            NCMECSignalExchangeAPI,
            StopNCIISignalExchangeAPI,
            TATSignalExchangeAPI,
        )
    }
    if name not in apis:
        raise ExchangeError(f"no exchange named {name!r}", hint=f"one of {', '.join(sorted(apis))}")
    return apis[name]


def signal_types() -> list:
    """The upstream signal types we match (vPDQ when python-threatexchange's vpdq extension imports)."""
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    types = [PdqSignal, VideoMD5Signal, VideoSHA256Signal]
    try:
        from threatexchange.extensions.vpdq.vpdq import VPDQSignal

        types.append(VPDQSignal)
    except ImportError:  # the extension needs the vpdq package (FFmpeg libraries): vPDQ rows are skipped
        pass
    return types


def collab_config(api_name: str, name: str, options: dict[str, str]):
    """The exchange's own collaboration config, built and checked by its class."""
    cls = api_class(api_name).get_config_cls()
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ExchangeError(
            f"exchange {api_name} has no option {', '.join(unknown)}",
            hint=f"its options: {', '.join(sorted(fields - {'name', 'api', 'enabled'})) or 'none'}",
        )
    import typing

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {"name": name}
    for key, raw in options.items():
        values[key] = _coerce(hints.get(key), raw, f"{api_name} option {key}")
    if "api" in fields:
        values.setdefault("api", api_name)
    if "enabled" in fields:
        values.setdefault("enabled", True)
    try:
        return cls(**values)
    except TypeError as err:
        raise ExchangeError(f"exchange {api_name}: {err}") from None


def _coerce(kind: Any, raw: str, what: str) -> Any:
    """An option given as text, as the config field's type wants it (int, bool, an enum by name or value,
    a list of ints: NCMEC's environment and only_esp_ids, ThreatExchange's privacy_group)."""
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kind = args[0]
    try:
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            by_name = {m.name.lower(): m for m in kind}
            return by_name.get(raw.lower()) or kind(raw)
        if kind is bool:
            return raw.lower() in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if typing.get_origin(kind) in (list, set, frozenset) or kind in (list, set):
            (inner,) = typing.get_args(kind) or (str,)
            items = [inner(part.strip()) for part in raw.split(",") if part.strip()]
            return set(items) if typing.get_origin(kind) is set else items
    except (ValueError, TypeError, KeyError):
        raise ExchangeError(f"{what}: {raw!r} is not a valid value") from None
    return raw


def _plain(value: Any) -> Any:
    """A dataclass (record, checkpoint) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _restore(cls, data: Any):
    import dacite

    if data is None:
        return None
    return dacite.from_dict(cls, data, config=dacite.Config(cast=[enum.Enum, set, frozenset, tuple]))


def _dump_state(state: dict) -> str:
    return json.dumps([[list(k) if isinstance(k, tuple) else k, _plain(v)] for k, v in state.items()])


def _load_state(text: str | None, record_cls) -> dict:
    if not text:
        return {}
    return {tuple(k) if isinstance(k, list) else k: _restore(record_cls, v) for k, v in json.loads(text)}


def fetch(subscription: dict) -> tuple[list[tuple[str, str, str, str]], str | None, str, dict[str, int]]:
    """(entries, checkpoint JSON, state JSON, counts) of one subscription, from where its last fetch stopped."""
    from mirror_scan.redact import scrub

    api_cls = api_class(subscription["api"])
    collab = collab_config(subscription["api"], subscription["name"], json.loads(subscription["config"]))
    counts = {"fetched": 0, "kept": 0, "refused": 0, "other_types": 0, "started_afresh": 0}
    try:
        checkpoint = _restore(api_cls.get_checkpoint_cls(), json.loads(subscription["checkpoint"] or "null"))
        state = _load_state(subscription["state"], api_cls.get_record_cls())
    except Exception:  # noqa: BLE001 - a checkpoint of another version: fetch everything again
        checkpoint, state = None, {}
        counts["started_afresh"] = 1
    if checkpoint is not None and checkpoint.is_stale():
        checkpoint, state = None, {}
    types = signal_types()
    try:
        api = api_cls.for_collab(collab)
        for delta in api.fetch_iter(types, checkpoint):
            api_cls.naive_fetch_merge(state, delta.updates)
            counts["fetched"] += len(delta.updates)
            checkpoint = delta.checkpoint
        by_type = api_cls.naive_convert_to_signal_type(types, collab, state)
    except MirrorScanError:
        raise
    except Exception as err:  # noqa: BLE001 - the exchange's own errors (auth, network, format), said plainly
        detail = scrub(str(err)).splitlines()[0] if str(err) else type(err).__name__
        raise ExchangeError(f"exchange {subscription['api']} ({subscription['name']}): {detail}") from None
    entries = []
    source = f"exchange {subscription['api']}"
    for signal_type, signals in by_type.items():
        ours = UPSTREAM_TYPES.get(signal_type.get_name())
        if ours is None:
            counts["other_types"] += len(signals)
            continue
        for value in signals:
            if ours == "vpdq":
                try:
                    value = encode_vpdq(decode_vpdq(value))
                except ValueError:
                    counts["refused"] += 1
                    continue
            normalised, problem = check_value(ours, value)
            if problem:
                counts["refused"] += 1  # degenerate, or not what the type says: never matched on
                continue
            entries.append((ours, normalised, None, source))
    counts["kept"] = len(entries)
    return entries, json.dumps(_plain(checkpoint)) if checkpoint is not None else None, _dump_state(state), counts
