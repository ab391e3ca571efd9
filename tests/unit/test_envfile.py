"""app.env_file: systemd's EnvironmentFile= format, the checks on the file, and that no value
read from it is ever shown (repr, `--check`, the fingerprint, the kube export)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ultrascaled.core.command import fingerprint, instance_env
from ultrascaled.spec import SpecError, load_spec, parse_spec, shown_spec
from ultrascaled.spec.envfile import EnvFileError, FileEnv, decode_env_file, parse_env_text

SECRET = "hunter2-Zq9-never-shown"


def parse(text: str) -> dict[str, str]:
    return {k: v for _, k, v in parse_env_text(text, "f.env")}


# What systemd.exec(5) says each form means (EnvironmentFile=), one case a line.
@pytest.mark.parametrize("text, want", [
    ("A=1\n", {"A": "1"}),
    ("A=1", {"A": "1"}),                                         # no final newline
    ("A=\n", {"A": ""}),
    ("  A = spaced out  \n", {"A": "spaced out"}),               # outer whitespace dropped, inner kept
    ("A=a  b\tc\n", {"A": "a  b\tc"}),
    ("A=x\r\nB=y\r\n", {"A": "x", "B": "y"}),                    # CRLF: the CR is whitespace
    ("# c\n; c\n\n   \nA=1\n", {"A": "1"}),                      # comments and blank lines
    ("A=1 # not a comment\n", {"A": "1 # not a comment"}),       # only a line starting with # or ;
    ("A=a\"b\"c\n", {"A": 'a"b"c'}),                             # quotes after the first char stay
    ("A=a'b'\n", {"A": "a'b'"}),
    ("A=\"two words \"\n", {"A": "two words "}),                 # inside quotes whitespace stays
    ("A='it''s'\n", {"A": "its"}),                               # quoted parts join, like a shell
    ("A='a\\nb $X'\n", {"A": "a\\nb $X"}),                       # single quotes: verbatim
    ("A='line1\nline2'\n", {"A": "line1\nline2"}),               # ... and may span lines
    ('A="q\\"d \\$X \\\\ \\` \\n"\n', {"A": 'q"d $X \\ ` \\n'}),  # double quotes: shell escapes
    ('A="multi\nline"\n', {"A": "multi\nline"}),
    ('A="cont\\\ninued"\n', {"A": "continued"}),
    ("A=a\\\nb\n", {"A": "ab"}),                                 # backslash continues the line
    ("A=a\\ b\\\\c\\x\n", {"A": "a b\\cx"}),                     # unquoted backslash escapes
    ("A=${HOME} $X\n", {"A": "${HOME} $X"}),                     # no expansion
    ("A=1\nA=2\n", {"A": "2"}),                                  # the later one wins
    ("A=x=y\n", {"A": "x=y"}),
    ("# comment ending in \\\nA=1\n", {"A": "1"}),                # a comment never continues (v254)
    ("A=é ü 日本\n", {"A": "é ü 日本"}),
])
def test_systemd_environmentfile_syntax(text, want):
    assert parse(text) == want


@pytest.mark.parametrize("text, says", [
    ("A=1\nnot an assignment\n", "f.env (line 2): the line has no `=`"),
    ("A=1\n\nlast", "f.env (line 3): the line has no `=`"),
    ("A=1\n  s3cret-pasted-alone  \n", "f.env (line 2): the line has no `=`"),
    ("export A=1\n", "f.env (line 1): `export A=...`: systemd's EnvironmentFile= has no `export`"),
    ("1A=x\n", "f.env (line 1): '1A' is not an environment variable name"),
    ("A B=x\n", "f.env (line 1): 'A B' is not an environment variable name"),
    ("A-B=x\n", "'A-B' is not an environment variable name"),
    ("postgres://u:s3cret@db/x?a=1\n", "f.env (line 1): the text before `=` is not an environment"),
    ("A=1\nB=\"open\n\nC=3\n", "f.env (line 2): the value of B opens a \" quote that is never closed"),
    ("B='open\n", "the value of B opens a ' quote that is never closed"),
])
def test_a_line_systemd_would_drop_or_mangle_is_refused_with_its_number(text, says):
    with pytest.raises(EnvFileError) as exc:
        parse_env_text(text, "f.env")
    assert says in str(exc.value), str(exc.value)
    assert "s3cret" not in str(exc.value)   # a line without `=` may be a pasted value


@pytest.mark.parametrize("data, says", [
    (b"A=1\nB=caf\xe9\n", "f.env (line 2): not UTF-8 text: byte 0xe9"),
    (b"A=1\x00\n", "f.env (line 1): not UTF-8 text: it holds a NUL byte"),
    ("\ufeffA=1\n".encode(), "f.env (line 1): holds a byte order mark"),
])
def test_what_systemd_refuses_to_decode_is_refused(data, says):
    with pytest.raises(EnvFileError, match="^" + says.replace("(", r"\(").replace(")", r"\)")):
        decode_env_file(data, "f.env")


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"),
                max_size=40)


def quoted(value: str) -> str:
    return '"' + "".join("\\" + c if c in '"\\`$' else c for c in value) + '"'


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(names, texts, max_size=6))
def test_any_value_written_double_quoted_reads_back_as_itself(env):
    text = "".join(f"{k}={quoted(v)}\n" for k, v in env.items())
    assert parse(text) == env


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_assignments_or_an_error_naming_the_file(text):
    try:
        got = parse_env_text(text, "f.env")
    except EnvFileError as exc:
        assert str(exc).startswith("f.env (line ")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) and n >= 1 for n, k, v in got)


# ---- app.env_file in a spec -----------------------------------------------------------------

def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def spec_with(tmp_path: Path, app: str) -> Path:
    p = tmp_path / "fleet.yaml"
    p.write_text(f"app: {app}\n")
    return p


def errors_of(path: Path) -> str:
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    return "\n".join(exc.value.errors)


def test_files_relative_to_the_spec_a_later_one_wins_and_app_env_wins_over_all(tmp_path):
    write(tmp_path / "base.env", "A=base\nB=base\nC=base\n")
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "host.env", "B=host\nC=host\n")
    spec = load_spec(spec_with(tmp_path, "{env_file: [base.env, conf/host.env], env: {C: spec}}"))
    assert spec.app.env_file == [str(tmp_path / "base.env"), str(tmp_path / "conf" / "host.env")]
    assert dict(spec.app.file_env) == {"A": "base", "B": "host", "C": "host"}
    env = instance_env(spec, 0, 8001, "/m")
    assert (env["A"], env["B"], env["C"]) == ("base", "host", "spec")
    assert env["PORT"] == "8001"   # the daemon's own variables stay over both


def test_one_path_as_a_string_and_a_missing_optional_file(tmp_path):
    write(tmp_path / "a.env", "A=1\n")
    spec = load_spec(spec_with(tmp_path, "{env_file: a.env}"))
    assert dict(spec.app.file_env) == {"A": "1"}
    spec = load_spec(spec_with(tmp_path, "{env_file: [a.env, -nope.env]}"))
    assert dict(spec.app.file_env) == {"A": "1"}
    assert spec.app.env_file[1] == "-" + str(tmp_path / "nope.env")


def test_a_missing_file_a_directory_and_a_bad_line_are_refused_naming_the_file(tmp_path):
    says = errors_of(spec_with(tmp_path, "{env_file: nope.env}"))
    assert f"app.env_file (line 1): {tmp_path / 'nope.env'} does not exist" in says
    (tmp_path / "d.env").mkdir()
    assert f"{tmp_path / 'd.env'}: is a directory" in errors_of(spec_with(tmp_path, "{env_file: d.env}"))
    write(tmp_path / "bad.env", "A=1\nB\n")
    says = errors_of(spec_with(tmp_path, "{env_file: bad.env}"))
    assert f"app.env_file (line 1): {tmp_path / 'bad.env'} (line 2): the line has no `=`" in says
    write(tmp_path / "latin1.env", "A=1\n", 0o600)
    (tmp_path / "latin1.env").write_bytes(b"A=caf\xe9\n")
    assert "(line 1): not UTF-8 text" in errors_of(spec_with(tmp_path, "{env_file: latin1.env}"))
    assert "is not a path" in errors_of(spec_with(tmp_path, "{env_file: ['-']}"))
    assert "app.env_file (line 1): must be a string or a list of strings" in \
        errors_of(spec_with(tmp_path, "{env_file: {a: b}}"))


def test_a_world_readable_file_with_a_secret_looking_key_is_refused(tmp_path):
    write(tmp_path / "s.env", f"PLAIN=1\nDB_PASSWORD={SECRET}\n", 0o644)
    says = errors_of(spec_with(tmp_path, "{env_file: s.env}"))
    assert f"{tmp_path / 's.env'} is readable by every local user (mode 644) and holds " \
           "DB_PASSWORD (line 2)" in says and "chmod o-r" in says
    assert SECRET not in says
    os.chmod(tmp_path / "s.env", 0o640)   # group-readable is the operator's choice
    assert load_spec(tmp_path / "fleet.yaml").app.file_env["DB_PASSWORD"] == SECRET
    write(tmp_path / "plain.env", "LOG_LEVEL=debug\nWORKERS_HINT=2\n", 0o644)
    assert load_spec(spec_with(tmp_path, "{env_file: plain.env}")).app.file_env["LOG_LEVEL"] == "debug"


@pytest.mark.parametrize("name", ["SECRET_KEY", "API_TOKEN", "DB_PASSWORD", "SMTP_PASSWD",
                                  "STRIPE_KEY", "AWS_ACCESS_KEY_ID", "GCP_CREDENTIALS", "APIKEY"])
def test_secret_looking_names(name, tmp_path):
    write(tmp_path / "s.env", f"{name}=x\n", 0o604)
    assert f"holds {name} (line 1)" in errors_of(spec_with(tmp_path, "{env_file: s.env}"))


def test_no_value_from_the_file_is_ever_shown(tmp_path):
    write(tmp_path / "s.env", f"DB_PASSWORD={SECRET}\n")
    spec = load_spec(spec_with(tmp_path, "{env_file: s.env}"))
    assert spec.app.file_env["DB_PASSWORD"] == SECRET
    dumped = json.dumps(shown_spec(spec))
    assert SECRET not in dumped and '"DB_PASSWORD": "***"' in dumped
    for text in (repr(spec), str(spec.app), repr(spec.app.file_env), fingerprint(spec, 8001)):
        assert SECRET not in text
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(spec.app.file_env)
    from ultrascaled.export import kube
    ex = kube.export(spec)
    assert SECRET not in json.dumps(ex.manifests) and SECRET not in "\n".join(ex.warnings)


def test_a_changed_value_changes_the_fingerprint_so_a_reload_restarts(tmp_path):
    write(tmp_path / "s.env", "A=1\n")
    before = load_spec(spec_with(tmp_path, "{env_file: s.env}"))
    write(tmp_path / "s.env", "A=2\n")
    after = load_spec(tmp_path / "fleet.yaml")
    assert fingerprint(before, 8001) != fingerprint(after, 8001)
    assert before != after and before.app != after.app   # the reload's "changed" names `app`
    assert fingerprint(after, 8001) == fingerprint(load_spec(tmp_path / "fleet.yaml"), 8001)


def test_file_env_is_an_immutable_mapping():
    env = FileEnv({"A": "1"})
    assert env == FileEnv({"A": "1"}) and env != FileEnv({"A": "2"})
    assert dict(env) == {"A": "1"} and env.shown() == {"A": "***"}
    with pytest.raises(AttributeError):
        env._items = {}
    assert FileEnv({"A": "1"}).digest() == FileEnv({"A": "1"}).digest() != FileEnv({"A": "2"}).digest()


def test_the_kube_export_loads_the_secret_before_the_configmap(tmp_path):
    from ultrascaled.export import kube
    write(tmp_path / "s.env", f"DB_PASSWORD={SECRET}\n")
    spec = load_spec(spec_with(tmp_path, "{env_file: s.env}"))
    ex = kube.export(spec)
    deployment = next(m for m in ex.manifests if m["kind"] == "Deployment")
    env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    name = deployment["metadata"]["name"]
    assert env_from == [{"secretRef": {"name": f"{name}-env-file"}},
                        {"configMapRef": {"name": f"{name}-env"}}]
    assert not [m for m in ex.manifests if m["kind"] == "Secret"]
    said = "\n".join(ex.warnings)
    assert f"kubectl create secret generic {name}-env-file --from-env-file={tmp_path / 's.env'}" in said
    assert "Keys: DB_PASSWORD" in said


# ---- unknown keys say where the key lives -----------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("env_file: x\n", "env_file (line 1): unknown key; `env_file` lives in another section: "
                      "did you mean `app.env_file`?"),
    ("instances: {workers: 2}\n", "instances.workers (line 1): unknown key; `workers` lives in "
                                  "another section: did you mean `gunicorn.workers`?"),
    ("timeout: 3\n", "did you mean one of `gunicorn.timeout`, `health.timeout`?"),
    ("app.env_file: x\n", "app.env_file (line 1): unknown key; write `env_file` inside the `app` "
                          "section (a dotted name is one key in YAML)"),
    ("app: {env_fil: x}\n", "app.env_fil (line 1): unknown key; did you mean `env_file`?"),
    ("envfile: x\n", "envfile (line 1): unknown key; did you mean `app.env_file`?"),
    ("health: {gunicorn: {}}\n", "did you mean `gunicorn` at the top level?"),
    ("autoscale: {scale_up: {}}\n", "did you mean `autoscale.behavior.scale_up`?"),
])
def test_an_unknown_key_suggests_the_key_meant(text, says):
    with pytest.raises(SpecError) as exc:
        parse_spec(text, base_dir=Path("/srv"))
    assert any(says in e for e in exc.value.errors), exc.value.errors


def test_an_unknown_key_far_from_every_key_gets_no_guess():
    with pytest.raises(SpecError) as exc:
        parse_spec("zzqx: 1\n")
    assert exc.value.errors == ["zzqx (line 1): unknown key"]
