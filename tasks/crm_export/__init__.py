"""tasks/crm_export"""
