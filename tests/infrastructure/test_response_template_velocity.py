"""The integration response template rendered by Apache Velocity 1.7 (API Gateway's engine) over StartSyncExecution
results: 200 with the workflow output, and every error status of the contract (400, 403, 503, 504, 500) with a
valid JSON error body whatever the message holds.

``$input.path``, ``$util.parseJson``, ``$util.escapeJavaScript`` and ``$context.responseOverride`` are given as API
Gateway documents them; the JDK and the jars come from the project's setup (``make tools``: Debian's ``velocity``,
``libcommons-lang-java``, ``libcommons-collections3-java`` and a JDK).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from shardrag.errors import ERROR_STATUS
from shardrag_cdk import api_mapping
from test_request_template_velocity import CLASSPATH

#: Renders the response template: args = template file, result JSON file. Prints "<status>\n<body>".
_RENDER = r"""
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import org.apache.commons.lang.StringEscapeUtils;
import org.apache.velocity.VelocityContext;
import org.apache.velocity.app.VelocityEngine;

public class RenderResponse {
    /** A minimal JSON reader (objects, arrays, strings, numbers, literals): enough for $util.parseJson. */
    static class Json {
        final String s; int i = 0;
        Json(String s) { this.s = s; }
        void ws() { while (i < s.length() && Character.isWhitespace(s.charAt(i))) i++; }
        Object value() {
            ws();
            char c = s.charAt(i);
            if (c == '{') { i++; Map<String, Object> m = new LinkedHashMap<>(); ws();
                if (s.charAt(i) == '}') { i++; return m; }
                while (true) { ws(); String k = string(); ws(); i++; m.put(k, value()); ws();
                    if (s.charAt(i++) == '}') return m; } }
            if (c == '[') { i++; List<Object> l = new ArrayList<>(); ws();
                if (s.charAt(i) == ']') { i++; return l; }
                while (true) { l.add(value()); ws(); if (s.charAt(i++) == ']') return l; } }
            if (c == '"') return string();
            int start = i;
            while (i < s.length() && ",}] \n\t\r".indexOf(s.charAt(i)) < 0) i++;
            String token = s.substring(start, i);
            if (token.equals("true")) return Boolean.TRUE;
            if (token.equals("false")) return Boolean.FALSE;
            if (token.equals("null")) return null;
            return Double.valueOf(token);
        }
        String string() {
            StringBuilder b = new StringBuilder(); i++;
            while (true) { char c = s.charAt(i++);
                if (c == '"') return b.toString();
                if (c != '\\') { b.append(c); continue; }
                char e = s.charAt(i++);
                switch (e) {
                    case 'n': b.append('\n'); break; case 't': b.append('\t'); break;
                    case 'r': b.append('\r'); break; case 'b': b.append('\b'); break; case 'f': b.append('\f'); break;
                    case 'u': b.append((char) Integer.parseInt(s.substring(i, i + 4), 16)); i += 4; break;
                    default: b.append(e);
                } }
        }
    }
    public static class Util {
        public String escapeJavaScript(String s) { return StringEscapeUtils.escapeJavaScript(s); }
        public Object parseJson(String s) { return new Json(s).value(); }
    }
    /** $input.path('$.field') over the StartSyncExecution result (top-level fields only, as the template uses). */
    public static class Input {
        private final Map<?, ?> result;
        Input(Map<?, ?> result) { this.result = result; }
        public Object path(String path) { return result.get(path.substring(2)); }
    }
    public static void main(String[] args) throws Exception {
        String template = new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8);
        String result = new String(Files.readAllBytes(Paths.get(args[1])), StandardCharsets.UTF_8);
        VelocityEngine engine = new VelocityEngine();
        engine.init();
        Map<String, Object> override = new HashMap<>();
        Map<String, Object> context = new HashMap<>();
        context.put("responseOverride", override);
        VelocityContext vtl = new VelocityContext();
        vtl.put("util", new Util());
        vtl.put("input", new Input((Map<?, ?>) new Json(result).value()));
        vtl.put("context", context);
        StringWriter out = new StringWriter();
        engine.evaluate(vtl, out, "response", template);
        Object status = override.get("status");
        System.out.print((status == null ? "200" : status.toString()) + "\n" + out);
    }
}
"""

Render = Callable[[dict[str, Any]], tuple[int, Any]]


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    assert CLASSPATH and shutil.which("javac"), "no JDK or Velocity 1.7 jars: run `make tools`"
    work = tmp_path_factory.mktemp("velocity-response")
    (work / "RenderResponse.java").write_text(_RENDER)
    subprocess.run(["javac", "-cp", CLASSPATH, "-d", str(work), str(work / "RenderResponse.java")], check=True)
    (work / "template.vtl").write_text(api_mapping.response_template())

    def run(result: dict[str, Any]) -> tuple[int, Any]:
        (work / "result.json").write_text(json.dumps(result), encoding="utf-8")
        command = ["java", "-cp", f"{CLASSPATH}{os.pathsep}{work}", "RenderResponse"]
        command += [str(work / "template.vtl"), str(work / "result.json")]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        status, body = out.split("\n", 1)
        return int(status), json.loads(body)  # must be valid JSON, whatever the message held

    return run


def _lambda_failure(error: str, message: str) -> dict[str, Any]:
    cause = {"errorMessage": message, "errorType": error, "stackTrace": ['  File "/var/task/handler.py", line 1']}
    return {"status": "FAILED", "error": error, "cause": json.dumps(cause)}


def test_success_passes_the_workflow_output_with_200(render: Render) -> None:
    output = {"answer": 'Tides [1] "quoted"', "citations": [{"doc_id": "tides.txt"}], "degraded": False}
    assert render({"status": "SUCCEEDED", "output": json.dumps(output)}) == (200, output)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ("BadRequest", 400, "bad_request"),
        ("Forbidden", 403, "forbidden"),
        ("ShardsUnavailable", 503, "shards_unavailable"),
        ("GenerationFailed", 502, "generation_failed"),
    ],
)
def test_each_contract_error_gets_its_status_and_message(render: Render, error: str, status: int, code: str) -> None:
    assert ERROR_STATUS[error] == (status, code)  # the table both the local API and this template read
    message = f"{error}: \"quoted\" \\ back\nslash 'single' é"
    assert render(_lambda_failure(error, message)) == (status, {"error": {"code": code, "message": message}})


def test_a_timed_out_workflow_is_a_504(render: Render) -> None:
    assert render({"status": "TIMED_OUT"}) == (
        504,
        {"error": {"code": "timeout", "message": api_mapping.TIMEOUT_MESSAGE}},
    )
    # A Task timeout's cause is plain text (not a Lambda error's JSON): the message is the error's name.
    assert render({"status": "FAILED", "error": "States.Timeout", "cause": "Task timed out"}) == (
        504,
        {"error": {"code": "timeout", "message": "States.Timeout"}},
    )


def test_an_unknown_error_is_a_generic_500_without_its_detail(render: Render) -> None:
    status, body = render(_lambda_failure("KeyError", "secret internals"))
    assert status == 500
    assert body["error"]["code"] == "internal_error"
    assert "secret internals" not in json.dumps(body)


def test_long_messages_are_cut_and_stack_traces_never_shown(render: Render) -> None:
    status, body = render(_lambda_failure("BadRequest", "x" * 2000))
    assert status == 400
    assert body["error"]["message"] == "x" * api_mapping.MAX_MESSAGE_CHARS
    assert "stackTrace" not in json.dumps(body) and "handler.py" not in json.dumps(body)
