"""
What a caller of the gateway runs (nothing of the gateway imports it, and
it imports nothing of the gateway): `aws_iam` signs the ``AWS-IAM``
credential with botocore, for ``airflowrpc call --aws`` and for any Python
caller that has the gateway's package at hand.
"""
