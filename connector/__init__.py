"""mms-crm-connector: Aircall MMS/SMS into HubSpot and Salesforce timelines."""

__version__ = "0.1.0"
