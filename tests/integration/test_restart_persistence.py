"""`make dev` twice on the same data directory: what was uploaded, indexed and registered in the first run is
still there in the second — bucket, registry and shards agree — and a delete in the second run still removes it.

Runs in a subprocess: the two runtimes start and stop moto's process-global mock, which must not disturb the
package's shared runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from shardrag import services
    from shardrag_local.runtime import LocalRuntime, DOCUMENTS_BUCKET

    doc = Path(sys.argv[1])
    question = {"question": "Where does the quokka Zibble live?", "generate": False, "top_k": 3}

    def run_once():
        services.reset_caches()
        runtime = LocalRuntime(serve_aws=False)
        runtime.start()
        return runtime

    first = run_once()
    first.index_paths([doc], prefix="notes/")
    status, body = first.execute(question)
    assert status == 200 and body["hits"][0]["doc_id"].endswith("quokka.txt"), body
    first.stop()

    second = run_once()
    keys = [o["Key"] for o in second.aws.client("s3").list_objects_v2(Bucket=DOCUMENTS_BUCKET).get("Contents", [])]
    record = second.ingestion.registry.get_source(f"{DOCUMENTS_BUCKET}/notes/quokka.txt")
    status, body = second.execute(question)
    found_after_restart = body["hits"][0]["doc_id"] if body["hits"] else None
    second.aws.client("s3").delete_object(Bucket=DOCUMENTS_BUCKET, Key="notes/quokka.txt")
    assert second.ingestion.wait_idle(60)
    status, body = second.execute(question)
    gone = all("Zibble" not in h["text"] for h in body["hits"])
    second.stop()
    print(json.dumps({"keys": keys, "registered": record is not None and record.chunk_count > 0,
                      "found_after_restart": found_after_restart, "gone_after_delete": gone}))
    """
)


def test_bucket_registry_and_shards_survive_a_restart(tmp_path: Path) -> None:
    doc = tmp_path / "quokka.txt"
    doc.write_text("The quokka Zibble lives on Rottnest Island and smiles at every visitor.")
    env = {
        **os.environ,
        "SHARDRAG_DATA_DIR": str(tmp_path / "data"),
        "SHARDRAG_SETTINGS": json.dumps({"store": {"shard_count": 2}}),
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(doc)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "notes/quokka.txt" in result["keys"]
    assert result["registered"] is True
    assert result["found_after_restart"].endswith("quokka.txt")
    assert result["gone_after_delete"] is True
