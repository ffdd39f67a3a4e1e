"""The ports on the Azure SDKs (azure-ai-ml, azure-storage-*, azure-data-tables, azure-eventgrid)."""
