"""What makes the platform run itself: jobs, schedules, sensors, tenant onboarding, retries,
failure alerts and the dead-run sweep."""
