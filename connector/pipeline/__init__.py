"""The worker side: claim due deliveries, render, write to the CRM, record the outcome."""
