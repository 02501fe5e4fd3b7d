"""The public query API: REST API Gateway → StartSyncExecution of the EXPRESS query workflow."""

from __future__ import annotations

import json
from typing import Final

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct
from shardrag.api_contract import GENERIC_MESSAGE
from shardrag.config import TenancySettings
from shardrag.errors import ERROR_STATUS

from shardrag_cdk import api_mapping
from shardrag_cdk.config import ApiConfig, DeploymentConfig
from shardrag_cdk.lambdas import log_retention, removal_policy
from shardrag_cdk.nag import acknowledge

JSON: Final = "application/json"
#: Every status the integration response can produce (method responses must declare them).
RESPONSE_STATUSES: Final = sorted({200, 500, 504, *(status for status, _ in ERROR_STATUS.values())})


class UserPool(Construct):
    """The stack's own Cognito user pool: administrators create the users, each with an immutable tenant.

    Without self sign-up nobody chooses their own attributes, and an immutable custom attribute is written
    once, at creation (``admin-create-user --user-attributes Name=custom:tenant,Value=...``): a user cannot move
    to another tenant, nor can a later administrator mistake.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, tenant_attribute: str | None, deployment: DeploymentConfig
    ) -> None:
        super().__init__(scope, construct_id)
        self.pool = cognito.UserPool(
            self,
            "Pool",
            self_sign_up_enabled=False,
            custom_attributes=(
                {tenant_attribute: cognito.StringAttribute(min_len=1, max_len=128, mutable=False)}
                if tenant_attribute
                else None
            ),
            password_policy=cognito.PasswordPolicy(
                min_length=12, require_digits=True, require_lowercase=True, require_uppercase=True, require_symbols=True
            ),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            account_recovery=cognito.AccountRecovery.NONE,
            removal_policy=removal_policy(deployment),
        )
        # The API reads no attribute a user could write: clients may write none (the tenant is immutable anyway).
        self.client = self.pool.add_client(
            "Client",
            auth_flows=cognito.AuthFlow(user_srp=True),
            generate_secret=False,
            write_attributes=cognito.ClientAttributes(),
        )
        acknowledge(
            self.pool,
            (
                "AwsSolutions-COG8",
                "Threat protection needs the Plus feature plan, a per-user cost left to the operator; users are "
                "created by administrators only, MFA is required and passwords are long.",
            ),
        )
        CfnOutput(self, "UserPoolId", value=self.pool.user_pool_id, description="admin-create-user here")
        CfnOutput(self, "UserPoolClientId", value=self.client.user_pool_client_id, description="sign in (SRP)")


class ApiAuth(Construct):
    """Method authorisation for the configured mode: IAM (SigV4), API key + usage plan, or Cognito ID tokens."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ApiConfig,
        tenancy: TenancySettings,
        tenant_attribute: str | None,
        deployment: DeploymentConfig,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        #: Where the integration reads the caller's tenant (None: single-tenant).
        self.tenant_reference = api_mapping.tenant_reference(config.auth, tenancy)
        if config.auth == "iam":
            self.method_options = apigw.MethodOptions(authorization_type=apigw.AuthorizationType.IAM)
        elif config.auth == "api_key":
            self.method_options = apigw.MethodOptions(api_key_required=True)
        else:
            pool = (
                cognito.UserPool.from_user_pool_arn(self, "UserPool", config.cognito_user_pool_arn)
                if config.cognito_user_pool_arn
                else UserPool(self, "Users", tenant_attribute=tenant_attribute, deployment=deployment).pool
            )
            authorizer = apigw.CognitoUserPoolsAuthorizer(self, "Authorizer", cognito_user_pools=[pool])
            # No OAuth scopes on the methods: API Gateway then takes the token as an ID token, the one that
            # carries the user's custom attributes (the tenant claim).
            self.method_options = apigw.MethodOptions(
                authorization_type=apigw.AuthorizationType.COGNITO, authorizer=authorizer
            )

    def attach(self, api: apigw.RestApi) -> None:
        """Objects that need the deployed stage: the API key and its usage plan."""
        if self.config.auth != "api_key":
            return
        key = apigw.ApiKey(self, "Key", description="ShardRAG query API key")
        plan = apigw.UsagePlan(
            self,
            "UsagePlan",
            throttle=apigw.ThrottleSettings(
                rate_limit=self.config.throttle_rate_limit, burst_limit=self.config.throttle_burst_limit
            ),
            quota=(
                apigw.QuotaSettings(limit=self.config.quota_per_day, period=apigw.Period.DAY)
                if self.config.quota_per_day
                else None
            ),
            api_stages=[apigw.UsagePlanPerApiStage(api=api, stage=api.deployment_stage)],
        )
        plan.add_api_key(key)
        CfnOutput(self, "ApiKeyId", value=key.key_id, description="aws apigateway get-api-key --include-value")


class QueryRoute(Construct):
    """``POST /query``: body validated against the core's request schema, then StartSyncExecution."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        state_machine: sfn.IStateMachine,
        method_options: apigw.MethodOptions,
        tenant_reference: str | None,
    ) -> None:
        super().__init__(scope, construct_id)
        model = apigw.CfnModel(
            self,
            "RequestModel",
            rest_api_id=api.rest_api_id,
            content_type=JSON,
            name="QueryRequest",
            description="POST /query body (shardrag.request.QueryRequest)",
            # CfnModel takes the schema as-is; the typed JsonSchema of apigateway.Model would need a
            # field-by-field translation of the core's schema.
            schema=api_mapping.request_model_schema(),
        )
        validator = apigw.RequestValidator(
            self, "Validator", rest_api=api, validate_request_body=True, validate_request_parameters=True
        )
        integration = apigw.StepFunctionsIntegration.start_execution(
            state_machine,
            request_templates={JSON: api_mapping.request_template(state_machine.state_machine_arn, tenant_reference)},
            integration_responses=[
                apigw.IntegrationResponse(
                    status_code="200", response_templates={JSON: api_mapping.response_template()}
                ),
                # The Step Functions API itself refused (throttling, a misconfiguration): not the caller's fault.
                apigw.IntegrationResponse(
                    selection_pattern=r"[45]\d{2}",
                    status_code="500",
                    response_templates={
                        JSON: json.dumps({"error": {"code": "internal_error", "message": GENERIC_MESSAGE}})
                    },
                ),
            ],
            use_default_method_responses=False,
        )
        self.method = api.root.add_resource("query").add_method(
            "POST",
            integration,
            request_validator=validator,
            request_models={JSON: apigw.Model.from_model_name(self, "Model", model.ref)},
            method_responses=[apigw.MethodResponse(status_code=str(status)) for status in RESPONSE_STATUSES],
            authorization_type=method_options.authorization_type,
            authorizer=method_options.authorizer,
            api_key_required=method_options.api_key_required,
        )


class QueryApi(Construct):
    """The REST API: regional endpoint, throttled stage with X-Ray, execution and JSON access logs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        state_machine: sfn.IStateMachine,
        config: ApiConfig,
        deployment: DeploymentConfig,
        tenancy: TenancySettings,
        tenant_attribute: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=log_retention(deployment),
            removal_policy=removal_policy(deployment),
        )
        self.auth = ApiAuth(
            self, "Auth", config=config, tenancy=tenancy, tenant_attribute=tenant_attribute, deployment=deployment
        )
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{Stack.of(self).stack_name}-query",
            description="ShardRAG query API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=config.create_cloudwatch_role,
            cloud_watch_role_removal_policy=removal_policy(deployment),
            default_method_options=self.auth.method_options,
            deploy_options=apigw.StageOptions(
                stage_name=config.stage_name,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                # Request/response bodies are user data: never in execution logs.
                data_trace_enabled=False,
                throttling_rate_limit=config.throttle_rate_limit,
                throttling_burst_limit=config.throttle_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
            ),
        )
        self.query = QueryRoute(
            self,
            "Query",
            api=self.api,
            state_machine=state_machine,
            method_options=self.auth.method_options,
            tenant_reference=self.auth.tenant_reference,
        )
        self.api.root.add_resource("health").add_method(
            "GET",
            apigw.MockIntegration(
                request_templates={JSON: '{"statusCode": 200}'},
                integration_responses=[
                    apigw.IntegrationResponse(status_code="200", response_templates={JSON: '{"status": "ok"}'})
                ],
            ),
            method_responses=[apigw.MethodResponse(status_code="200")],
        )
        self._gateway_responses()
        self.auth.attach(self.api)
        if config.waf_web_acl_arn:
            wafv2.CfnWebACLAssociation(
                self, "Waf", resource_arn=self.api.deployment_stage.stage_arn, web_acl_arn=config.waf_web_acl_arn
            )
        self._acknowledge(config)

    def _acknowledge(self, config: ApiConfig) -> None:
        if config.create_cloudwatch_role:
            acknowledge(
                self.api,
                (
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AmazonAPIGatewayPushToCloudWatchLogs]",
                    "AWS's policy for API Gateway's account-wide logging role (execution logs need it).",
                ),
            )
        if not config.waf_web_acl_arn:
            acknowledge(
                self.api.deployment_stage,
                (
                    "AwsSolutions-APIG3",
                    "WAF is opt-in (deployment.api.waf_web_acl_arn): the API is authenticated and throttled, "
                    "and a web ACL is an account-level choice with its own cost.",
                ),
            )
        reasons = {
            "iam": "Authorisation is IAM (SigV4): callers are AWS principals, no user pool is involved.",
            "api_key": "Authorisation is an API key with a throttled usage plan, chosen by this environment.",
        }
        if config.auth in reasons:
            findings = [("AwsSolutions-COG4", reasons[config.auth])]
            if config.auth == "api_key":
                findings.append(("AwsSolutions-APIG4", reasons[config.auth]))
            acknowledge(self.api.root, *findings)

    def _gateway_responses(self) -> None:
        """Errors API Gateway answers itself, in the same ``{"error": {code, message}}`` shape as the rest."""
        responses = {
            "BadRequestBody": (
                apigw.ResponseType.BAD_REQUEST_BODY,
                "400",
                # Gateway response templates get plain substitution, no VTL: validationErrorString carries unescaped
                # quotes (``instance value ("x") not found``) that would break the JSON body; messageString is
                # API Gateway's own quoted string. Field-level detail comes from the Embed stage's validation.
                api_mapping.error_template("bad_request", "$context.error.messageString"),
            ),
            "Timeout": (
                apigw.ResponseType.INTEGRATION_TIMEOUT,
                "504",
                api_mapping.error_template("timeout", json.dumps(api_mapping.TIMEOUT_MESSAGE)),
            ),
            "Default4xx": (
                apigw.ResponseType.DEFAULT_4_XX,
                None,
                api_mapping.error_template("request_rejected", "$context.error.messageString"),
            ),
            "Default5xx": (
                apigw.ResponseType.DEFAULT_5_XX,
                None,
                api_mapping.error_template("gateway_error", "$context.error.messageString"),
            ),
        }
        for name, (response_type, status, template) in responses.items():
            self.api.add_gateway_response(name, type=response_type, status_code=status, templates={JSON: template})
