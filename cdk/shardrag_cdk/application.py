"""Building the CDK app for one environment chosen with ``-c env=<name>``."""

from __future__ import annotations

from typing import Final

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks, ServerlessChecks

from shardrag_cdk.config import load_environment
from shardrag_cdk.packaging import ASSET_MODE_CONTEXT, asset_mode
from shardrag_cdk.stack import ShardRagStack

ENV_CONTEXT: Final = "env"
ENVIRONMENTS_CONTEXT: Final = "environments"
#: Context switch for tests that inspect the template without the rule packs (``"false"`` to disable).
NAG_CONTEXT: Final = "shardrag:nag"


def build(app: App) -> ShardRagStack:
    """Add the chosen environment's stack to ``app`` and, unless disabled, the cdk-nag rule packs.

    Raises :class:`shardrag_cdk.config.DeploymentConfigError` for a missing/unknown environment or an
    invalid configuration.
    """
    config = load_environment(app.node.try_get_context(ENVIRONMENTS_CONTEXT), app.node.try_get_context(ENV_CONTEXT))
    stack = ShardRagStack(
        app,
        config.stack_name,
        config=config,
        assets=asset_mode(app.node.try_get_context(ASSET_MODE_CONTEXT)),
        env=Environment(account=config.account, region=config.region),
    )
    if str(app.node.try_get_context(NAG_CONTEXT)).lower() != "false":
        # Plugins run at synthesis; an unacknowledged finding fails it.
        Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks(app))
    return stack
