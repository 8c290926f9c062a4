"""What makes the platform run itself: jobs, schedules, sensors, tenant onboarding."""
