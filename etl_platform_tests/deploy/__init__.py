"""Tests of the deployment files and stacks."""
