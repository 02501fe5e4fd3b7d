# ShardRAG — the two commands: `make dev` (serve locally) and `make test` (all tests).
# Both set everything up from a fresh clone: virtualenv, Python packages, the ONNX model, the CDK CLI.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
MODEL := build/model/manifest.json
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export CDK_DISABLE_VERSION_CHECK := 1
export CDK_DISABLE_CLI_TELEMETRY := true
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: retrieval-study install model tools dev test test-unit test-integration test-infra lint format synth bench eval clean openapi lambda-assets deploy smoke

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

$(MODEL): $(STAMP)
	$(PY) -m shardrag_local.export_model --out build/model

model: $(MODEL)

## System tools the tests run (Debian/Ubuntu packages): Apache Velocity 1.7 and a JDK render the API Gateway mapping
## templates, shellcheck checks the Milvus host's bootstrap script, chromium + chromium-driver run the chat page's
## browser tests (headless, through Selenium). Installed once, with apt-get.
TOOL_FILES := /usr/share/java/velocity-1.7.jar /usr/share/java/commons-lang-2.6.jar /usr/share/java/commons-collections3.jar
TOOL_PACKAGES := velocity libcommons-lang-java libcommons-collections3-java default-jdk-headless shellcheck chromium chromium-driver
tools:
	@if [ -x "$$(command -v javac)" ] && [ -x "$$(command -v shellcheck)" ] && [ -x "$$(command -v chromium)" ] \
	  && [ -x "$$(command -v chromedriver)" ] && ls $(TOOL_FILES) >/dev/null 2>&1; then :; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(TOOL_PACKAGES); fi

node_modules/.bin/cdk: package.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Serve the API on 127.0.0.1:8080 (AWS endpoint on :4566) with the sample corpus indexed.
dev: install model
	$(PY) -m shardrag_local.cli serve

## Every test: unit, integration (real Milvus Lite, real model, local AWS emulation), infrastructure (CDK).
test: install model node_modules/.bin/cdk tools
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install model
	$(PY) -m pytest -q tests/integration

test-infra: install node_modules/.bin/cdk tools
	$(PY) -m pytest -q tests/infrastructure

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	MYPYPATH=cdk:layers/core/python $(VENV)/bin/mypy --strict --explicit-package-bases -p shardrag_cdk

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

openapi: install
	$(PY) -c "import json; from shardrag.openapi import openapi_document as d; print(json.dumps(d(), indent=2))" > openapi.json

synth: install node_modules/.bin/cdk
	for e in $$($(PY) -c "import json; print(' '.join(json.load(open('cdk.json'))['context']['environments']))"); do \
	  node_modules/.bin/cdk synth -c env=$$e --no-notices -q -o cdk.out/$$e || exit 1; done

ENV ?= dev
## Build the Lambda dependency layers (manylinux wheels, no Docker) into build/lambda/.
lambda-assets: install model
	$(PY) scripts/build_lambda_assets.py

## Deploy one environment: make deploy ENV=prod (builds the layers first; a template with stand-ins cannot deploy)
deploy: install node_modules/.bin/cdk lambda-assets
	node_modules/.bin/cdk deploy -c env=$(ENV) -c shardrag:assets=require --no-notices

## Smoke-test a deployed environment (signed as its auth requires): make smoke ENV=dev [SMOKE_ARGS=--outage]
## `make test` runs the same command against the local runtime (tests/smoke).
smoke: install
	$(PY) -m shardrag_local.smoke --env $(ENV) $(SMOKE_ARGS)

bench: install model
	$(PY) -m bench.run

## Retrieval quality (nDCG@10, recall, MRR) and latency on a BEIR folder, through S3 ingestion and POST /query of a
## fresh local runtime in each mode (dense, bm25, hybrid), with exact-dense and BM25 baselines in the same run; JSON
## in bench/results, tables in BENCHMARKS.md. EVAL_ARGS adds options, e.g. EVAL_ARGS="--limit-queries 50 --shards 8"
## or EVAL_ARGS="--compare-shards 1" (hybrid again on one shard in a second fresh runtime, for the parity target).
## Then the conversational run (issue 16): mtrag-mini's follow-up turns through S3 ingestion and POST /chat, each
## as the last turn alone, with its history (condensed) and as MTRAG's human rewrite, in bm25 and hybrid mode, with
## time to first token and to done (extractive generator). CHAT_EVAL_ARGS adds options, e.g. "--limit-turns 50".
EVAL_DATASET ?= ../shared/datasets/scifact
CHAT_EVAL_DATASET ?= ../shared/datasets/mtrag-mini
eval: install model
	$(PY) -m shardrag_local.evaluation --dataset $(EVAL_DATASET) --update-benchmarks $(EVAL_ARGS)
	$(PY) -m shardrag_local.evaluation.conversations --dataset $(CHAT_EVAL_DATASET) --update-benchmarks $(CHAT_EVAL_ARGS)

## The retrieval defaults study (issue 14): BM25 k1/b/avgdl and fusion chosen by the worst case over SciFact test,
## NFCorpus dev and mtrag-mini, offline over embeddings cached in build/retrieval-study (first run: embeds each corpus
## once). Also part of `make bench`. Results: bench/results/retrieval_study.{json,md} and, for the shipped design (a
## unit's weights on its first row, fusion by document), bench/results/document_fusion_study.{json,md}.
retrieval-study: install model
	$(PY) -m bench.run retrieval_study
	$(PY) -m bench.run document_fusion_study

clean:
	rm -rf build cdk.out .shardrag
