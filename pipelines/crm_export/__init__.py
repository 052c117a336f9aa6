"""pipelines/crm_export"""
