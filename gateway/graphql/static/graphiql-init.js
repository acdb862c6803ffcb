// Starts GraphiQL against this gateway's /graphql. The browser's own credentials are not sent:
// paste "Authorization: Bearer <token>" (or "X-API-Key") into the headers tab.
(function () {
  var fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, { fetcher: fetcher, defaultEditorToolsVisibility: true }));
})();
