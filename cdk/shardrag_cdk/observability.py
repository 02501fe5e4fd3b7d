"""Dashboard and alarms: per-stage latency and errors, degraded answers, failed reranks and feedback rounds that
fell back to the first pass, the API, ingestion, the DLQ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from shardrag_cdk.config import AlarmConfig, DeploymentConfig

#: Powertools ``service`` dimension of the query-path business metrics (``DegradedAnswers``, ``ShardFailures``,
#: ``FeedbackFallbacks``): functions/fuse_generate/handler.py and functions/feedback/handler.py set it explicitly.
QUERY_METRICS_SERVICE: Final = "query"
#: Published by the Feedback function when its second, dense round failed and the first pass answers instead (a
#: failed *invocation* of Feedback, throttled or timed out, is caught by the workflow and counts in Lambda's own
#: metrics instead).
FEEDBACK_FALLBACKS_METRIC: Final = "FeedbackFallbacks"
#: Published by the Feedback function when a query reached it past ``retrieval.feedback.budget_ms`` and skipped the
#: round (load shedding: a rising count means the shards queue).
FEEDBACK_SKIPPED_METRIC: Final = "FeedbackSkipped"
#: Counted from FuseAndGenerate's log: ``shardrag.workflow`` warns ``rerank failed (<reason>): ...`` and keeps the
#: fused order, so the failure shows in no error metric.
RERANK_FAILURES_METRIC: Final = "RerankFailures"
RERANK_FAILED_LOG_PHRASE: Final = "rerank failed"
WIDTH: Final = 12


class Observability(Construct):
    """One dashboard for the whole system plus the alarms an operator must hear about."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        state_machine: sfn.StateMachine,
        functions: Mapping[str, lambda_.IFunction],
        ingest: lambda_.IFunction,
        queue: sqs.IQueue,
        dead_letters: sqs.IQueue,
        deployment: DeploymentConfig,
        rerank_logs: logs.ILogGroup | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        alarms = deployment.alarms
        period = Duration.minutes(alarms.period_minutes)
        namespace = deployment.metrics_namespace

        def business(name: str) -> cw.Metric:
            return cw.Metric(
                namespace=namespace,
                metric_name=name,
                dimensions_map={"service": QUERY_METRICS_SERVICE},
                statistic="Sum",
                period=period,
            )

        api_requests = api.metric_count(statistic="Sum", period=period)
        api_5xx = api.metric_server_error(statistic="Sum", period=period)
        api_p95 = api.metric_latency(statistic="p95", period=period)
        api_5xx_rate = cw.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)",
            using_metrics={"errors": api_5xx, "requests": api_requests},
            label="5xx rate (%)",
            period=period,
        )
        every = {**functions, "ingest": ingest}
        query_errors = {name: fn.metric_errors(statistic="Sum", period=period) for name, fn in functions.items()}
        query_invocations = {
            name: fn.metric_invocations(statistic="Sum", period=period) for name, fn in functions.items()
        }

        answer_quality = [
            business("ShardFailures"),
            business("DegradedAnswers"),
            business(FEEDBACK_FALLBACKS_METRIC),
            business(FEEDBACK_SKIPPED_METRIC),
        ]
        answer_title = "Shard failures, degraded answers, feedback fallbacks and skips"
        if rerank_logs is not None:
            logs.MetricFilter(
                self,
                "RerankFailures",
                log_group=rerank_logs,
                # A quoted phrase matches the text log line and a JSON one alike.
                filter_pattern=logs.FilterPattern.literal(f'"{RERANK_FAILED_LOG_PHRASE}"'),
                metric_namespace=namespace,
                metric_name=RERANK_FAILURES_METRIC,
                metric_value="1",
            )
            answer_quality.append(
                cw.Metric(namespace=namespace, metric_name=RERANK_FAILURES_METRIC, statistic="Sum", period=period)
            )
            answer_title += ", failed reranks"

        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{Stack.of(self).stack_name}-overview")
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="API latency (ms)", width=WIDTH,
                left=[api.metric_latency(statistic=s, period=period) for s in ("p50", "p95")],
            ),
            cw.GraphWidget(
                title="API requests and errors", width=WIDTH,
                left=[api_requests, api.metric_client_error(statistic="Sum", period=period), api_5xx],
            ),
            cw.GraphWidget(
                title="Stage duration p50 / p95 (ms)", width=WIDTH,
                left=[
                    fn.metric_duration(statistic=s, period=period, label=f"{name} {s}")
                    for name, fn in every.items()
                    for s in ("p50", "p95")
                ],
            ),
            cw.GraphWidget(
                title="Function errors", width=WIDTH,
                left=[fn.metric_errors(label=name, statistic="Sum", period=period) for name, fn in every.items()],
            ),
            cw.GraphWidget(
                title="Workflow executions", width=WIDTH,
                left=[
                    state_machine.metric_succeeded(statistic="Sum", period=period),
                    state_machine.metric_failed(statistic="Sum", period=period),
                    state_machine.metric_timed_out(statistic="Sum", period=period),
                ],
            ),
            cw.GraphWidget(
                title=answer_title, width=WIDTH,
                left=answer_quality,
            ),
            cw.GraphWidget(
                title="Ingestion throughput (messages / period)", width=WIDTH,
                left=[
                    queue.metric_number_of_messages_sent(statistic="Sum", period=period),
                    queue.metric_number_of_messages_deleted(statistic="Sum", period=period),
                    ingest.metric_invocations(statistic="Sum", period=period),
                ],
            ),
            cw.GraphWidget(
                title="Ingestion backlog and dead letters", width=WIDTH,
                left=[
                    queue.metric_approximate_number_of_messages_visible(period=period),
                    queue.metric_approximate_age_of_oldest_message(period=period),
                    dead_letters.metric_approximate_number_of_messages_visible(period=period),
                ],
            ),
        )  # fmt: skip

        periods = alarms.evaluation_periods
        self.alarms = [
            api_p95.create_alarm(
                self, "ApiLatencyP95",
                alarm_description="API p95 latency above the configured threshold",
                threshold=alarms.api_p95_latency_ms,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                evaluation_periods=periods, datapoints_to_alarm=periods,
            ),
            api_5xx_rate.create_alarm(
                self, "Api5xxRate",
                alarm_description="Share of API requests answered with a 5xx",
                threshold=alarms.api_5xx_rate_percent,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                evaluation_periods=periods, datapoints_to_alarm=periods,
            ),
            self._function_error_rate(query_errors, query_invocations, alarms, period),
            state_machine.metric_failed(statistic="Sum", period=period).create_alarm(
                self, "WorkflowFailed",
                alarm_description="Failed query executions (errors the API returned as 4xx/5xx)",
                threshold=alarms.workflow_failed_executions,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                evaluation_periods=periods, datapoints_to_alarm=periods,
            ),
            dead_letters.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum")
            .create_alarm(
                self, "DeadLetters",
                alarm_description="Documents that failed ingestion repeatedly wait in the dead-letter queue",
                threshold=alarms.dlq_depth,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                evaluation_periods=1,
            ),
        ]  # fmt: skip
        if alarms.topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarms.topic_arn)
            for alarm in self.alarms:
                alarm.add_alarm_action(cw_actions.SnsAction(topic))
                alarm.add_ok_action(cw_actions.SnsAction(topic))
        self.dashboard.add_widgets(cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=2 * WIDTH))

    def _function_error_rate(
        self,
        errors: Mapping[str, cw.IMetric],
        invocations: Mapping[str, cw.IMetric],
        alarms: AlarmConfig,
        period: Duration,
    ) -> cw.Alarm:
        """Errors over invocations across the query-path functions, in percent."""
        using = {f"e{i}": m for i, m in enumerate(errors.values())}
        using |= {f"i{i}": m for i, m in enumerate(invocations.values())}
        failed = " + ".join(f"e{i}" for i in range(len(errors)))
        total = " + ".join(f"i{i}" for i in range(len(invocations)))
        rate = cw.MathExpression(
            expression=f"IF(({total}) > 0, 100 * ({failed}) / ({total}), 0)",
            using_metrics=using,
            label="query function error rate (%)",
            period=period,
        )
        return rate.create_alarm(
            self,
            "FunctionErrorRate",
            alarm_description="Share of query-path Lambda invocations that failed",
            threshold=alarms.function_error_rate_percent,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=alarms.evaluation_periods,
            datapoints_to_alarm=alarms.evaluation_periods,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
