"""The request template rendered by Apache Velocity 1.7 with commons-lang's escapeJavaScript (API Gateway's engine
and ``$util.escapeJavaScript``): the body arrives untouched and the tenant exactly as the claim holds it, whatever
quotes or backslashes it contains.

Needs a JDK and the jars: ``make tools`` installs Debian's ``velocity`` 1.7, ``libcommons-lang-java`` and
``libcommons-collections3-java`` (``/usr/share/java``); ``VELOCITY_CLASSPATH`` or a local Maven repository also work.
Without them the tests fail (they are the only check of what API Gateway will render), they do not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from shardrag_cdk import api_mapping

_M2 = Path.home() / ".m2" / "repository"
_JARS = (
    "org/apache/velocity/velocity/1.7/velocity-1.7.jar",
    "commons-lang/commons-lang/2.6/commons-lang-2.6.jar",
    "commons-collections/commons-collections/3.2.2/commons-collections-3.2.2.jar",
)
#: Debian's packages of the same releases (velocity 1.7-6, commons-lang 2.6, commons-collections 3.2.2).
_DEBIAN = tuple(
    Path("/usr/share/java") / jar for jar in ("velocity-1.7.jar", "commons-lang-2.6.jar", "commons-collections3.jar")
)
CLASSPATH = os.environ.get("VELOCITY_CLASSPATH") or (
    os.pathsep.join(str(jar) for jar in _DEBIAN)
    if all(jar.exists() for jar in _DEBIAN)
    else os.pathsep.join(str(_M2 / jar) for jar in _JARS)
    if all((_M2 / jar).exists() for jar in _JARS)
    else ""
)


@pytest.fixture(scope="module", autouse=True)
def _engine_installed() -> None:
    assert CLASSPATH and shutil.which("javac") and shutil.which("java"), "no JDK or Velocity 1.7 jars: `make tools`"


#: Renders a template with $util, $input.json('$') and $context.authorizer.claims as API Gateway provides them.
_RENDER = """
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import org.apache.commons.lang.StringEscapeUtils;
import org.apache.velocity.VelocityContext;
import org.apache.velocity.app.VelocityEngine;

public class Render {
    public static class Util {
        public String escapeJavaScript(String s) { return StringEscapeUtils.escapeJavaScript(s); }
    }
    public static class Input {
        private final String body;
        Input(String body) { this.body = body; }
        public String json(String path) { return body; }
    }
    static String read(String path) throws Exception {
        return new String(Files.readAllBytes(Paths.get(path)), StandardCharsets.UTF_8);
    }
    public static void main(String[] args) throws Exception {
        VelocityEngine engine = new VelocityEngine();
        engine.init();
        Map<String, Object> claims = new HashMap<>();
        if (!args[3].equals("-")) claims.put(args[2], read(args[3]));
        VelocityContext context = new VelocityContext();
        context.put("util", new Util());
        context.put("input", new Input(read(args[1])));
        context.put("context", Collections.singletonMap("authorizer", Collections.singletonMap("claims", claims)));
        StringWriter out = new StringWriter();
        engine.evaluate(context, out, "template", read(args[0]));
        System.out.print(out);
    }
}
"""

ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:q"
CLAIM = "custom:tenant"
Render = Callable[[str, "str | None"], dict[str, object]]
BODY = {"question": 'it\'s "quoted" / a\\b é 中\n $x #set', "top_k": 3, "filters": {"tag": ["x'y"]}}


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    work = tmp_path_factory.mktemp("velocity")
    (work / "Render.java").write_text(_RENDER)
    subprocess.run(["javac", "-cp", CLASSPATH, "-d", str(work), str(work / "Render.java")], check=True)

    def run(template: str, tenant: str | None) -> dict[str, object]:
        (work / "template.vtl").write_text(template)
        (work / "body.json").write_text(json.dumps(BODY, ensure_ascii=False), encoding="utf-8")
        if tenant is not None:
            (work / "tenant.txt").write_text(tenant, encoding="utf-8")
        command = ["java", "-cp", f"{CLASSPATH}{os.pathsep}{work}", "Render"]
        command += [str(work / "template.vtl"), str(work / "body.json"), CLAIM]
        command.append(str(work / "tenant.txt") if tenant is not None else "-")
        rendered = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        request = json.loads(rendered)
        assert request["stateMachineArn"] == ARN
        execution_input: dict[str, object] = json.loads(request["input"])
        return execution_input

    return run


@pytest.mark.parametrize(
    "tenant",
    ["acme", 'a"b\'c\\d/é", "tenant": "other', "\\'\\\\'$context.x #set($a = 1)\n"],
    ids=["plain", "quotes", "backslashes-and-vtl"],
)
def test_claim_reaches_the_workflow_exactly(render: Render, tenant: str) -> None:
    template = api_mapping.request_template(ARN, f"$context.authorizer.claims['{CLAIM}']")
    assert render(template, tenant) == {"request": BODY, "caller": {"tenant": tenant}}


def test_absent_claim_gives_an_empty_tenant(render: Render) -> None:
    template = api_mapping.request_template(ARN, f"$context.authorizer.claims['{CLAIM}']")
    assert render(template, None) == {"request": BODY, "caller": {"tenant": ""}}


def test_single_mode_ignores_any_claim(render: Render) -> None:
    assert render(api_mapping.request_template(ARN), "acme") == {"request": BODY, "caller": {"tenant": ""}}
