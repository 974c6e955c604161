"""Credentials never leave in a URI: settings refuse a URI that carries them (it would be
committed in params.yaml, tagged and printed), and every message that names a URI masks them."""
import pytest

from boneseg.cli import main
from boneseg.core.redact import credentials_in, redact
from boneseg.sweep.storage import Storage

SECRET = "SeCrEt/planted+KEY"


@pytest.mark.parametrize("uri,shown", [
    (f"s3://AKIAPLANTED:{SECRET}@ray/x?endpoint_override=h:1", "s3://***@ray/x?endpoint_override=h:1"),
    (f"s3://ray/x?access_key=AKIAPLANTED&secret_key={SECRET}&scheme=http",
     "s3://ray/x?access_key=***&secret_key=***&scheme=http"),
    (f"http://alice:{SECRET}@mlflow.lab:5000", "http://***@mlflow.lab:5000"),
    (f"error: 'postgresql://mlflow:{SECRET}@db/mlflow'", "error: 'postgresql://***@db/mlflow'"),
])
def test_redact_masks_user_info_and_secret_parameters(uri, shown):
    assert redact(uri) == shown and SECRET not in redact(uri) and credentials_in(uri)


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "/data/ray", "s3://ray/x?endpoint_override=h:1",
                                 "http://127.0.0.1:5000", "postgresql://mlflow@db/mlflow"])
def test_uris_without_secrets_pass_unchanged_where_they_hold_none(uri):
    assert not credentials_in(uri)


@pytest.mark.parametrize("key,uri", [
    ("sweep.storage_path", f"s3://AKIAPLANTED:{SECRET}@ray/boneseg"),
    ("sweep.storage_path", f"s3://ray/boneseg?access_key=AK&secret_key={SECRET}"),
    ("tracking.uri", f"http://alice:{SECRET}@127.0.0.1:9"),
])
def test_settings_refuse_a_uri_with_credentials_without_echoing_them(key, uri, capsys):
    rc = main(["config", "--set", f"{key}={uri}"])
    out = capsys.readouterr()
    lines = [x for x in out.err.splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1 and key in lines[0] and "in the environment instead" in lines[0]
    assert SECRET not in out.out + out.err


def test_a_tracking_uri_from_the_environment_is_masked_in_preflight(monkeypatch, tmp_path):
    from boneseg.core.config import Config
    from boneseg.tracking.runs import unreachable

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:9")
    why = unreachable(Config())
    assert why and "http://***@127.0.0.1:9 not reachable" in why and SECRET not in why


def test_storage_messages_and_tags_carry_no_secret():
    st = Storage(f"s3://ray/boneseg?endpoint_override=127.0.0.1:9&access_key=AK&secret_key={SECRET}")
    assert st.where == "s3://ray/boneseg"
    assert SECRET not in st.resume_point("sweep-x", "multi-random-fold0").name
