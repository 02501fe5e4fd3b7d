"""cdk-nag acknowledgements: each names one finding on one construct (and its children), with the reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, *findings: tuple[str, str]) -> None:
    """Acknowledge ``(finding id, reason)`` pairs on ``construct``.

    Ids are cdk-nag's rule ids, with the finding in brackets where a rule reports several per resource
    (``AwsSolutions-IAM5[Resource::*]``): acknowledging one finding leaves the others reported.
    """
    Validations.of(construct).acknowledge(*(Acknowledgment(id=rule, reason=reason) for rule, reason in findings))
