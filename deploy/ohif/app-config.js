/* OHIF v3 for fracture-triage: one DICOMweb data source, Orthanc's DICOMweb plugin.
 *
 * The paths are relative: OHIF and /dicom-web/ are served from one origin (the ohif-proxy
 * service of docker-compose.yml, or the tests' server), so the browser needs no CORS
 * headers, which Orthanc does not send. The tests serve this very file (tests/ohif.py).
 */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  // No guided tour over the viewer on a reader's first visit.
  customizationService: { 'ohif.tours': { $set: [] } },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc DICOMweb',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
