"""The user's own OpenClaw models as a fallback chain, when config.yaml names no `models.chain`.

OpenClaw's chain is `agents.defaults.model` (primary and fallbacks) in openclaw.json, read as OpenClaw reads
it (core.openclaw_config: where it is, JSON5, `$include`, `${VAR}`). Each reference is resolved as OpenClaw
resolves it (docs/gateway/config-agents/models.md): "provider/model"; else an alias from
`agents.defaults.models`; else the one configured provider that lists that model id. The provider gives the
base URL and API (`models.providers.<id>`, a model's own `baseUrl`/`api` over its provider's, or what
OpenClaw bundles for that provider id), the key's variable (`apiKey: "${VAR}"`, an env SecretRef, or the
provider's usual variables) and its headers. Only providers that speak the OpenAI chat API can be used; each
model that cannot is reported with the reason. Keys come only from the environment: a key written into
openclaw.json is never read. A server on this machine, the private network or a `.local` name needs no key,
as OpenClaw's own local-provider rule says.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core.config import Config, ModelEndpoint, header_problem, written_credential
from ..core.openclaw_config import config_path, expand, not_a_file, read_openclaw_files, variables
from ..errors import ConfigError


@dataclass(frozen=True)
class Provider:
    """What OpenClaw bundles for a provider id: its base URL (None: the user must give one), its API and
    the variables its key is read from (the first one set)."""

    base_url: str | None
    api: str
    key_vars: tuple[str, ...] = ()
    cannot: str | None = None  # why self-heal cannot call it, though its API is the chat one


# OpenClaw 2026.9.6's bundled providers (dist/extensions/*/openclaw.plugin.json: modelCatalog's baseUrl and
# api, setup's envVars; tests/test_openclaw_chain.py checks this table against the real package), and three
# OpenAI-compatible services self-heal knew before (groq, mistral, deepseek) that OpenClaw reaches through a
# models.providers entry.
BUNDLED: Mapping[str, Provider] = {
    "openai": Provider("https://api.openai.com/v1", "openai-responses", ("OPENAI_API_KEY",)),
    "openrouter": Provider("https://openrouter.ai/api/v1", "openai-completions", ("OPENROUTER_API_KEY",)),
    "together": Provider("https://api.together.xyz/v1", "openai-completions", ("TOGETHER_API_KEY",)),
    "nvidia": Provider("https://integrate.api.nvidia.com/v1", "openai-completions", ("NVIDIA_API_KEY",)),
    "huggingface": Provider(
        "https://router.huggingface.co/v1", "openai-completions", ("HUGGINGFACE_HUB_TOKEN", "HF_TOKEN")
    ),
    "opencode-go": Provider(
        "https://opencode.ai/zen/go/v1", "openai-completions", ("OPENCODE_API_KEY", "OPENCODE_ZEN_API_KEY")
    ),
    "xai": Provider("https://api.x.ai/v1", "openai-responses", ("XAI_API_KEY",)),
    "ollama": Provider("http://127.0.0.1:11434", "ollama", ("OLLAMA_API_KEY",)),
    "ollama-cloud": Provider("https://ollama.com", "ollama", ("OLLAMA_API_KEY",)),
    "lmstudio": Provider("http://127.0.0.1:1234/v1", "openai-completions", ("LM_API_TOKEN",)),
    "vllm": Provider(None, "openai-completions", ("VLLM_API_KEY",)),
    "sglang": Provider(None, "openai-completions", ("SGLANG_API_KEY",)),
    "litellm": Provider(None, "openai-completions", ("LITELLM_API_KEY",)),
    "anthropic": Provider("https://api.anthropic.com", "anthropic-messages", ("ANTHROPIC_API_KEY",)),
    "google": Provider(
        "https://generativelanguage.googleapis.com/v1beta", "google-generative-ai", ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    ),
    "google-vertex": Provider(None, "google-vertex", ("GOOGLE_CLOUD_API_KEY",)),
    "google-gemini-cli": Provider(None, "google-gemini-cli"),
    "github-copilot": Provider(
        "https://api.individual.githubcopilot.com",
        "openai-responses",
        ("COPILOT_GITHUB_TOKEN",),
        cannot="its key is a GitHub token OpenClaw exchanges for a Copilot one, which self-heal does not do",
    ),
    "claude-cli": Provider(None, "claude-cli"),
    "groq": Provider("https://api.groq.com/openai/v1", "openai-completions", ("GROQ_API_KEY",)),
    "mistral": Provider("https://api.mistral.ai/v1", "openai-completions", ("MISTRAL_API_KEY",)),
    "deepseek": Provider("https://api.deepseek.com/v1", "openai-completions", ("DEEPSEEK_API_KEY",)),
}
# Provider APIs (OpenClaw's `api`) self-heal can call: the OpenAI chat API, which OpenAI's and xAI's servers
# (their bundled `openai-responses`) and Ollama's (at /v1) also answer. Each other one is named as the reason.
CHAT_APIS = frozenset({"openai-completions", "openai-responses", "ollama"})
_API_NAMES = {
    "anthropic-messages": "Anthropic's Messages API",
    "google-generative-ai": "Google's Gemini API",
    "google-vertex": "Google Vertex AI's API",
    "google-gemini-cli": "the Gemini CLI",
    "claude-cli": "the Claude CLI",
    "bedrock-converse-stream": "Amazon Bedrock's API",
    "azure-openai-responses": "Azure OpenAI's Responses API",
}
# apiKey values OpenClaw takes to mean "no key: a local server" (nonSecretAuthMarkers), and Ollama's own.
_MARKERS = frozenset({"ollama-local", "lmstudio-local", "apple-fm-local", "OLLAMA_API_KEY"})


@dataclass(frozen=True)
class Chain:
    """A chain and where it came from: one line per entry, and the models that could not be used."""

    entries: tuple[ModelEndpoint, ...]
    sources: tuple[str, ...]
    unusable: tuple[str, ...] = ()
    origin: str = "skill.yaml"

    def unusable_line(self) -> str:
        """One line naming each configured model that cannot be used, and why ('' when none)."""
        if not self.unusable:
            return ""
        return "not used from openclaw.json: " + "; ".join(self.unusable)


class _Unusable(Exception):
    """This model cannot be called; the message says why."""


def _get(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _models(spec: object) -> list[Mapping[str, Any]]:
    """A provider's `models` list: its entries that are objects."""
    found = _get(spec, "models")
    return [m for m in found if isinstance(m, Mapping)] if isinstance(found, list) else []


def _name(ref: str) -> str:
    """An endpoint name from a model reference: the characters a name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ref).strip("-.") or "model"
    return name[:128]


def _no_key_needed(base_url: str) -> bool:
    """A server on this machine, the private network, a `.local` or bare host name: OpenClaw's rule for
    providers that need no real key (its Ollama discovery, providers/ollama/setup.md)."""
    host = (urlsplit(base_url).hostname or "").lower()
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return (
            host in ("localhost", "host.docker.internal") or host.endswith((".local", ".localhost")) or "." not in host
        )
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def _http_url(base_url: str) -> bool:
    """Whether the openai client can send to it: http or https, a host, a port that can be one. Caught here,
    a malformed URL is one line of the unusable models, not each request's "transient" failure."""
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:  # a malformed IPv6 address, a port that is not a number
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and not re.search(r"\s", base_url)


def _loopback(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# An environment variable's name as OpenClaw's SecretRefs take it (ENV_SECRET_REF_ID_RE), and its `$NAME`
# shorthand, which OpenClaw reads as `${NAME}` wherever a key or a header value may be a secret.
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,127}\Z")
_SHORTHAND = re.compile(r"\$([A-Z][A-Z0-9_]{0,127})\Z")


def _env_ref(value: object, what: str) -> str | None:
    """The variable an env SecretRef (`{source: "env", id: NAME}`, `"${NAME}"` or `"$NAME"`) names; None when
    `value` is no env reference. An env SecretRef whose id is no variable name is refused without quoting
    the id: a key pasted there by mistake would be printed as the name of a variable that is not set."""
    if isinstance(value, Mapping):
        if value.get("source") != "env":
            return None
        found = value.get("id")
        if not isinstance(found, str) or not _ENV_NAME.match(found.strip()):
            raise _Unusable(
                f"its {what} is an env SecretRef whose id is not an environment variable name (A-Z, 0-9, _)"
            )
        return found.strip()
    if not isinstance(value, str):
        return None
    text = value.strip()
    short = _SHORTHAND.match(text)
    if short:
        return short.group(1)
    named = variables(text)
    return named[0] if len(named) == 1 and text == f"${{{named[0]}}}" else None


def _key(provider: str, spec: Mapping[str, Any], bundled: Provider | None, keyless: bool) -> tuple[str | None, bool]:
    """(the key's environment variable, whether no key is to be sent). A key written into the file is never
    read: the model is unusable unless its server needs no key (`keyless`: on this machine or the private
    network), which is sent none, as OpenClaw's local examples (`apiKey: "sk-local"`, `"lmstudio"`) expect."""
    key = spec.get("apiKey")
    usual = (
        bundled.key_vars
        if bundled and bundled.key_vars
        else (re.sub(r"[^A-Z0-9_]", "_", provider.upper()) + "_API_KEY",)
    )
    if key is None:
        return usual[0], False
    named = _env_ref(key, "apiKey")
    if named is not None:
        return named, False
    if isinstance(key, Mapping):
        kind = key.get("source") or "non-environment"
        raise _Unusable(f"its apiKey is a {kind} secret (self-heal reads keys only from the environment)")
    if isinstance(key, str):
        if key.strip() in _MARKERS or keyless:
            return None, True
        raise _Unusable("its apiKey is written in openclaw.json (self-heal reads keys only from the environment)")
    raise _Unusable("its apiKey is not a string or an env SecretRef")


class _Resolver:
    def __init__(self, data: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.env = env
        providers = _get(data, "models", "providers")
        self.providers: Mapping[str, Any] = providers if isinstance(providers, Mapping) else {}
        # OpenClaw lower-cases provider ids (normalizeProviderId) in references and in models.providers alike:
        # the id as written, by its lower-case form (the first one written wins a tie).
        self.ids: dict[str, str] = {}
        for pid in self.providers:
            self.ids.setdefault(str(pid).strip().lower(), str(pid))
        # auth.profiles: which provider each of OpenClaw's stored credentials is for (the credentials themselves
        # live in its auth store, never read here), to name one when a key variable is missing.
        profiles = _get(data, "auth", "profiles")
        self.profiles: dict[str, str] = {}
        if isinstance(profiles, Mapping):
            for profile, settings in profiles.items():
                owner = _get(settings, "provider")
                if isinstance(owner, str) and owner.strip():
                    self.profiles.setdefault(owner.strip().lower(), str(profile))
        # env.vars: variables openclaw.json gives OpenClaw's own processes (keys, as a rule). Their names only:
        # self-heal takes a key from its own environment, never from a file, so a key there is not used; the
        # name is what tells the user where theirs is and what to export.
        inline = _get(data, "env", "vars")
        self.inline_vars = frozenset(str(name) for name in inline) if isinstance(inline, Mapping) else frozenset()
        models = _get(data, "agents", "defaults", "models")
        self.aliases: dict[str, str] = {}
        if isinstance(models, Mapping):
            for ref, settings in models.items():
                alias = _get(settings, "alias")
                if isinstance(alias, str) and alias.strip():
                    self.aliases.setdefault(alias.strip().lower(), str(ref))

    def ref(self, ref: str) -> tuple[str, str, str]:
        """(provider, model id, how the reference was read) for a reference as OpenClaw reads it."""
        ref = ref.strip()
        alias = self.aliases.get(ref.lower())
        if alias is not None:
            provider, _, model_id = alias.partition("/")
            if provider.strip() and model_id:
                return provider.strip().lower(), model_id, f"alias {ref!r} of agents.defaults.models"
        provider, _, model_id = ref.partition("/")
        if provider.strip() and model_id:
            return provider.strip().lower(), model_id, ""
        owners = [pid for pid, spec in self.providers.items() if any(_get(m, "id") == ref for m in _models(spec))]
        if len(owners) == 1:
            return str(owners[0]).strip().lower(), ref, f"the model id of models.providers.{owners[0]}"
        why = f"{len(owners)} providers list it" if owners else "no alias or configured provider has it"
        raise _Unusable(f"not provider/model, and {why}")

    def endpoint(self, provider: str, model_id: str) -> tuple[ModelEndpoint, str]:
        written = self.ids.get(provider, provider)
        spec = self.providers.get(written)
        spec = spec if isinstance(spec, Mapping) else {}
        bundled = BUNDLED.get(provider)
        model: Mapping[str, Any] = next((m for m in _models(spec) if m.get("id") == model_id), {})
        base = model.get("baseUrl") or spec.get("baseUrl") or spec.get("baseURL")
        # A bundled provider keeps its own API when the file only moves it (a proxy in front of Anthropic is
        # still Anthropic); any other provider with a baseUrl speaks OpenAI's chat API unless it says not.
        api = model.get("api") or spec.get("api") or (bundled.api if bundled else "openai-completions")
        if not isinstance(api, str):
            raise _Unusable("its api is not the name of an API")
        if base is None:
            if bundled is None:
                raise _Unusable("no models.providers entry with a baseUrl, and not a provider OpenClaw bundles")
            if bundled.base_url is None and api in CHAT_APIS:
                raise _Unusable(f"the {provider} provider needs a models.providers.{provider}.baseUrl")
            base = bundled.base_url
        if api not in CHAT_APIS:
            raise _Unusable(f"speaks {_API_NAMES.get(str(api), str(api))}, not the OpenAI chat API")
        if bundled is not None and bundled.cannot and not spec:
            raise _Unusable(bundled.cannot)
        if not isinstance(base, str):
            raise _Unusable("its baseUrl is not a string")
        base, missing = expand(base, self.env)
        if missing:
            raise _Unusable(f"its baseUrl needs ${missing[0]}, which is not set")
        base = base.rstrip("/")
        if not _http_url(base):
            raise _Unusable("its baseUrl is not an http:// or https:// URL with a host")
        if api == "ollama" and not base.endswith("/v1"):
            base += "/v1"  # Ollama's OpenAI-compatible endpoint beside its native one
        keyless = _no_key_needed(base)
        key_var, marker = _key(provider, spec, bundled, keyless)
        if key_var is not None and not self.env.get(key_var) and bundled and key_var in bundled.key_vars:
            key_var = next((v for v in bundled.key_vars if self.env.get(v)), key_var)
        free = marker or keyless
        if key_var is not None and not self.env.get(key_var):
            if not free:
                profile = self.profiles.get(provider)
                held = f"; its key is in OpenClaw's auth profile {profile!r}, which self-heal does not read"
                if key_var in self.inline_vars:
                    held = (
                        f"; openclaw.json's env.vars sets it for OpenClaw, but self-heal takes keys only from its"
                        f" own environment: export {key_var} where self-heal runs"
                    )
                raise _Unusable(f"${key_var} is not set" + (held if profile or key_var in self.inline_vars else ""))
            key_var = None  # a local or private server needs no key
        headers = self.headers(spec, model)
        context = model.get("contextTokens") or model.get("contextWindow")
        entry = ModelEndpoint(
            name="x",
            base_url=base,
            model=model_id,
            api_key_env=key_var,
            context_tokens=context
            if isinstance(context, int) and not isinstance(context, bool) and context > 0
            else None,
            local=_loopback(base) or None,
            headers=headers,
        )
        where = f"models.providers.{written}" if spec else f"OpenClaw's bundled provider {provider}"
        return entry, where

    def headers(self, spec: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, str]:
        """(name, value template) of the provider's and the model's headers; a credential header must take its
        value from the environment (`${VAR}` or an env SecretRef), never from the file."""
        found: dict[str, str] = {}
        for source in (spec.get("headers"), model.get("headers")):
            if not isinstance(source, Mapping):
                continue
            for name, given in source.items():
                named = _env_ref(given, f"header {name}")
                value = f"${{{named}}}" if named is not None else given
                if not isinstance(value, str):
                    raise _Unusable(f"its header {name} is not text or an env SecretRef")
                if written_credential(str(name), value):
                    raise _Unusable(
                        f"its header {name} is written in openclaw.json (self-heal reads credentials only from "
                        "the environment: write it as ${VAR})"
                    )
                problem = header_problem(str(name), value)
                if problem is not None:
                    raise _Unusable(f"a header it sends is not valid: {problem}")
                text, missing = expand(value, self.env)
                if missing:
                    raise _Unusable(f"its header {name} needs ${missing[0]}, which is not set")
                if "\n" in text or "\r" in text:
                    raise _Unusable(f"its header {name} reads a variable whose value is not one line")
                found[str(name)] = value
        return found


def _refs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = _get(data, "agents", "defaults", "model")
    refs: list[tuple[str, str]] = []
    if isinstance(model, str):
        refs.append(("agents.defaults.model", model))
    elif isinstance(model, Mapping):
        if isinstance(model.get("primary"), str):
            refs.append(("agents.defaults.model.primary", model["primary"]))
        fallbacks = model.get("fallbacks")
        if isinstance(fallbacks, list):
            refs += [
                (f"agents.defaults.model.fallbacks[{i}]", f) for i, f in enumerate(fallbacks) if isinstance(f, str)
            ]
    return [(where, ref) for where, ref in refs if ref.strip()]


def chain_from_data(data: Mapping[str, Any], path: Path, env: Mapping[str, str]) -> Chain | None:
    """The chain of OpenClaw's default agent in this (read) openclaw.json, or None when it names no model."""
    refs = _refs(data)
    if not refs:
        return None
    resolver = _Resolver(data, env)
    entries: list[ModelEndpoint] = []
    sources: list[str] = []
    unusable: list[str] = []
    seen: set[str] = set()
    for where, ref in refs:
        try:
            # OpenClaw substitutes ${VAR} in every string of its configuration, model references included.
            named, missing = expand(ref, env)
            if missing:
                raise _Unusable(f"it needs ${missing[0]}, which is not set")
            provider, model_id, how = resolver.ref(named)
            entry, origin = resolver.endpoint(provider, model_id)
        except (_Unusable, TypeError, ValueError) as exc:
            unusable.append(f"{ref} ({exc})")
            continue
        name = _name(f"{provider}/{model_id}")
        if name in seen:
            continue
        seen.add(name)
        entries.append(dataclasses.replace(entry, name=name))
        sources.append(f"{path}: {where} = {ref!r} ({origin}{', ' + how if how else ''})")
    return Chain(tuple(entries), tuple(sources), tuple(unusable), origin=str(path))


def _there(path: Path) -> bool:
    """Whether openclaw.json is there to be read: a file, or something else in its place (a FIFO, a folder),
    which the reader refuses by name (exit 2) rather than leaving the chain silently to skill.yaml's."""
    return path.is_file() or not_a_file(path) is not None


def chain_from_openclaw(env: Mapping[str, str] | None = None) -> Chain | None:
    """The chain of OpenClaw's default agent, or None when there is no openclaw.json or it names no model."""
    env = os.environ if env is None else env
    path = config_path(env)
    if not _there(path):
        return None
    data, _ = read_openclaw_files(path, env)
    return chain_from_data(data, path, env)


# openclaw.json as last read, by path: (each file's change stamp, the data). The chain itself is built from it
# on every call (microseconds), so a key variable set since is always seen.
_read: dict[str, tuple[tuple[tuple[str, int, int], ...], dict[str, Any]]] = {}


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for file in files:
        try:
            st = file.stat()
            out.append((str(file), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(file), -1, -1))
    return tuple(out)


def _data(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    hit = _read.get(str(path))
    if hit is not None and _stamp(tuple(Path(f) for f, _, _ in hit[0])) == hit[0]:
        return hit[1]
    data, files = read_openclaw_files(path, env)
    _read[str(path)] = (_stamp(files), data)
    return data


def resolve(config: Config, env: Mapping[str, str] | None = None) -> Chain:
    """The chain a call uses: config.yaml's models.chain when the user set one; else OpenClaw's models when
    openclaw.json names some (ConfigError when none of them can be used); else skill.yaml's."""
    env = os.environ if env is None else env
    own = config.models.chain
    if config.chain_configured:
        where = config.files[-1] if len(config.files) > 1 else "skill.yaml"
        return Chain(own, tuple(f"{where}: models.chain[{i}]" for i in range(len(own))), origin=where)
    path = config_path(env)
    there = _there(path)
    found = chain_from_data(_data(path, env), path, env) if there else None
    if found is None:
        why = f"no openclaw.json at {path}" if not there else f"{path} names no agents.defaults.model"
        return Chain(own, tuple(f"skill.yaml: models.chain[{i}] ({why})" for i in range(len(own))))
    if not found.entries:
        raise ConfigError(
            "none of OpenClaw's models can be used: "
            + "; ".join(found.unusable)
            + " (set their key variables, or write models.chain in config.yaml)",
            file=path,
        )
    return found


def with_chain(config: Config, chain: Chain) -> Config:
    """The configuration with this chain in models.chain."""
    if chain.entries == config.models.chain:
        return config
    return dataclasses.replace(config, models=dataclasses.replace(config.models, chain=chain.entries))
